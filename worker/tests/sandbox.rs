//! The tool sandbox against real attacks, with real processes: what issue 11 saw a
//! prompt-injected tool do to the gateway (read its environment and state, signal it),
//! tried through `hermes-worker sandbox-exec` against a stand-in gateway. A `sleep` with
//! a secret in its environment plays the gateway; a temporary directory plays its state
//! directory; Unix sockets at a path and abstract play D-Bus and the systemd manager.
//! These tests run as root here, which is the point: root ignores file modes and
//! `PR_SET_DUMPABLE`, so whatever is refused below is refused by the sandbox.
//!
//! Each attack is also tried without the sandbox where that is harmless, so a test
//! cannot pass because the attack was broken to begin with.

use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hermes_protocol::{Event, ToolCall, ToolServer};
use hermes_tests::harness::{cargo_build, target_profile_dir};
use hermes_worker::sandbox::{self, Landlock, Policy, Sandbox};
use hermes_worker::tools::Toolbox;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const TRAMPOLINE: &str = env!("CARGO_BIN_EXE_hermes-worker");
const SECRET: &str = "TELEGRAM_BOT_TOKEN=123456:stand-in-secret";
const BOUND: Duration = Duration::from_secs(30);

/// A stand-in gateway and its surroundings.
struct World {
    dir: tempfile::TempDir,
    /// The "gateway": a process outside the sandbox with a secret in its environment.
    gateway: Child,
    /// A process outside the job that nothing protects by pid ("another worker").
    bystander: Child,
    unix_path: PathBuf,
    unix: UnixListener,
    abstract_name: String,
    abstract_socket: UnixListener,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        for d in ["state", "credentials", "public", "jobs"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("state/state.db"), "every chat's history").unwrap();
        std::fs::write(
            dir.path().join("credentials/telegram-token"),
            "123456:token",
        )
        .unwrap();
        std::fs::write(dir.path().join("public/hermes.toml"), "[telegram]").unwrap();
        std::fs::write(dir.path().join("public/readme.txt"), "anyone may read this").unwrap();
        let gateway = sleeper(Some(SECRET));
        let bystander = sleeper(None);
        let unix_path = dir.path().join("public/bus.sock");
        let unix = UnixListener::bind(&unix_path).unwrap();
        unix.set_nonblocking(true).unwrap();
        static WORLDS: AtomicUsize = AtomicUsize::new(0);
        let abstract_name = format!(
            "hermes-sandbox-test-{}-{}",
            std::process::id(),
            WORLDS.fetch_add(1, Ordering::Relaxed)
        );
        let abstract_socket =
            UnixListener::bind_addr(&SocketAddr::from_abstract_name(&abstract_name).unwrap())
                .unwrap();
        abstract_socket.set_nonblocking(true).unwrap();
        World {
            dir,
            gateway,
            bystander,
            unix_path,
            unix,
            abstract_name,
            abstract_socket,
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn gateway_pid(&self) -> i32 {
        self.gateway.id() as i32
    }

    fn bystander_pid(&self) -> i32 {
        self.bystander.id() as i32
    }

    fn scratch(&self) -> PathBuf {
        self.path("jobs/job-1")
    }

    /// What the lead's gateway will hand the worker: hide the state and credentials
    /// directories and the configuration file, protect the gateway's pid. The scratch
    /// directory sits under the hidden `jobs`, so other jobs' scratch is hidden too.
    fn policy(&self) -> Policy {
        Policy {
            hidden: vec![
                self.path("state"),
                self.path("credentials"),
                self.path("public/hermes.toml"),
                self.path("jobs"),
            ],
            scratch: self.scratch(),
            protected_pids: vec![self.gateway_pid()],
            ..Policy::default()
        }
    }

    async fn sandboxed(&self, argv: &[&str]) -> Output {
        self.sandboxed_with(&self.policy(), argv).await
    }

    async fn sandboxed_with(&self, policy: &Policy, argv: &[&str]) -> Output {
        let sandbox = Sandbox::new(policy.clone()).with_trampoline(TRAMPOLINE);
        let mut command = tokio::process::Command::new(&sandbox.trampoline);
        command
            .args(sandbox.arguments(argv[0].as_ref()))
            .args(&argv[1..]);
        run(command).await
    }

    /// The same command without the sandbox.
    async fn plain(&self, argv: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(argv[0]);
        command.args(&argv[1..]);
        run(command).await
    }

    fn alive(pid: i32) -> bool {
        hermes_tests::procs::info(pid).is_some_and(|p| !p.is_zombie() && p.state != 'T')
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in [&mut self.gateway, &mut self.bystander] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sleeper(secret: Option<&str>) -> Child {
    let mut command = std::process::Command::new("sleep");
    command
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    if let Some((name, value)) = secret.and_then(|s| s.split_once('=')) {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

async fn run(mut command: tokio::process::Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().unwrap();
    tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("the command did not finish in time")
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Landlock ABI of this kernel as the sandbox uses it (0: none).
fn landlock_abi() -> u32 {
    match sandbox::probe().landlock {
        Landlock::Abi(abi) => abi,
        Landlock::Unavailable(_) => 0,
    }
}

/// Asserts that the sandboxed run failed, printed nothing of `secret`, and said why.
fn assert_refused(output: &Output, secret: &str) {
    assert!(
        !output.status.success(),
        "the attack worked:\n{}",
        text(output)
    );
    assert!(
        secret.is_empty() || !String::from_utf8_lossy(&output.stdout).contains(secret),
        "the secret leaked:\n{}",
        text(output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Permission denied") || stderr.contains("Operation not permitted"),
        "refused without saying so (an error the model can read):\n{}",
        text(output)
    );
}

#[tokio::test]
async fn a_tool_cannot_read_the_gateways_environment() {
    let world = World::new();
    let environ = format!("/proc/{}/environ", world.gateway_pid());
    let plain = world.plain(&["cat", &environ]).await;
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("stand-in-secret"),
        "precondition: the environment is readable without the sandbox\n{}",
        text(&plain)
    );
    let output = world.sandboxed(&["cat", &environ]).await;
    assert_refused(&output, "stand-in-secret");
}

#[tokio::test]
async fn a_tool_cannot_open_the_gateways_memory() {
    let world = World::new();
    let script = format!(
        "f = open('/proc/{}/mem', 'rb'); print('opened')",
        world.gateway_pid()
    );
    let plain = world.plain(&["python3", "-c", &script]).await;
    assert_eq!(stdout(&plain), "opened", "precondition\n{}", text(&plain));
    let output = world.sandboxed(&["python3", "-c", &script]).await;
    assert_refused(&output, "opened");
}

#[tokio::test]
async fn a_tool_cannot_read_the_state_credentials_or_configuration() {
    let world = World::new();
    for (file, content) in [
        ("state/state.db", "every chat's history"),
        ("credentials/telegram-token", "123456:token"),
        ("public/hermes.toml", "[telegram]"),
    ] {
        let path = world.path(file).display().to_string();
        let plain = world.plain(&["cat", &path]).await;
        assert_eq!(stdout(&plain), content, "precondition");
        let output = world.sandboxed(&["cat", &path]).await;
        assert_refused(&output, content);
    }
    let state = world.path("state").display().to_string();
    assert_refused(&world.sandboxed(&["ls", &state]).await, "state.db");
    // The hidden file's neighbour stays readable: hiding is exact, not by directory.
    let readme = world.path("public/readme.txt").display().to_string();
    let output = world.sandboxed(&["cat", &readme]).await;
    assert_eq!(stdout(&output), "anyone may read this", "{}", text(&output));
}

#[tokio::test]
async fn a_tool_cannot_terminate_or_stop_the_gateway() {
    let world = World::new();
    let pid = world.gateway_pid().to_string();
    let group = format!("-{pid}");
    for argv in [
        ["kill", "-TERM", &pid],
        ["kill", "-STOP", &pid],
        ["kill", "-KILL", &pid],
        ["kill", "-TERM", &group],
    ] {
        let output = world.sandboxed(&["sh", "-c", &argv.join(" ")]).await;
        assert_refused(&output, "");
        assert!(
            World::alive(world.gateway_pid()),
            "after {argv:?} the gateway is gone or stopped"
        );
    }
    // The sandbox leaves signals within the tool's own processes alone.
    let output = world
        .sandboxed(&["sh", "-c", "sleep 30 & kill -TERM $! && wait $!; echo $?"])
        .await;
    assert_eq!(stdout(&output), "143", "{}", text(&output));
}

#[tokio::test]
async fn a_tool_cannot_signal_every_process_at_once() {
    let world = World::new();
    // Signal 0 only asks whether the signal would be allowed: harmless if it is.
    let plain = world.plain(&["sh", "-c", "kill -0 -1"]).await;
    assert!(plain.status.success(), "precondition\n{}", text(&plain));
    let output = world.sandboxed(&["sh", "-c", "kill -0 -1"]).await;
    assert_refused(&output, "");
}

#[tokio::test]
async fn a_tool_cannot_signal_another_job() {
    if landlock_abi() < 6 {
        hermes_tests::skip::skip("this kernel has no Landlock signal scoping (ABI 6)");
        return;
    }
    let world = World::new();
    let pid = world.bystander_pid().to_string();
    let output = world.sandboxed(&["kill", "-TERM", &pid]).await;
    assert_refused(&output, "");
    assert!(
        World::alive(world.bystander_pid()),
        "the other job's process is gone"
    );
}

#[tokio::test]
async fn a_tool_cannot_connect_to_a_unix_socket_at_a_path_or_abstract() {
    let world = World::new();
    let connect = |address: String| {
        format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect({address}); print('connected')"
        )
    };
    let by_path = connect(format!("{:?}", world.unix_path.display().to_string()));
    let by_name = connect(format!("'\\0{}'", world.abstract_name));
    for script in [&by_path, &by_name] {
        let plain = world.plain(&["python3", "-c", script]).await;
        assert_eq!(
            stdout(&plain),
            "connected",
            "precondition\n{}",
            text(&plain)
        );
    }
    // Take the precondition's connections off the queue.
    while world.unix.accept().is_ok() {}
    while world.abstract_socket.accept().is_ok() {}
    for script in [&by_path, &by_name] {
        let output = world.sandboxed(&["python3", "-c", script]).await;
        assert_refused(&output, "connected");
    }
    for listener in [&world.unix, &world.abstract_socket] {
        assert_eq!(
            listener.accept().map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::WouldBlock),
            "a connection arrived"
        );
    }
}

#[tokio::test]
async fn a_tool_writes_only_in_its_scratch_directory() {
    let world = World::new();
    let outside = world.path("public/written");
    let state = world.path("state/state.db");
    let script = format!(
        "echo x > {}; echo y >> {}; rm -f {}",
        outside.display(),
        state.display(),
        state.display()
    );
    let output = world.sandboxed(&["sh", "-c", &script]).await;
    assert_refused(&output, "");
    assert!(!outside.exists(), "wrote outside the scratch directory");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "every chat's history",
        "the state was changed"
    );

    let output = world
        .sandboxed(&[
            "sh",
            "-c",
            "pwd; echo inside > \"$TMPDIR/file\" && mkdir d && mv \"$TMPDIR/file\" d/ && cat d/file; echo discarded > /dev/null",
        ])
        .await;
    let scratch = world.scratch().display().to_string();
    assert_eq!(
        stdout(&output),
        format!("{scratch}\ninside"),
        "{}",
        text(&output)
    );
    assert!(output.status.success(), "{}", text(&output));
}

#[tokio::test]
async fn an_explicit_grant_opens_a_path_to_a_tool() {
    let world = World::new();
    let granted = world.path("public/granted");
    std::fs::create_dir(&granted).unwrap();
    let mut policy = world.policy();
    policy.writable.push(granted.clone());
    policy.readable.push(world.path("state"));
    let script = format!(
        "echo ok > {}/out && cat {}",
        granted.display(),
        world.path("state/state.db").display()
    );
    let output = world.sandboxed_with(&policy, &["sh", "-c", &script]).await;
    assert_eq!(stdout(&output), "every chat's history", "{}", text(&output));
    assert_eq!(
        std::fs::read_to_string(granted.join("out")).unwrap(),
        "ok\n"
    );
}

#[tokio::test]
async fn a_tool_cannot_leave_the_workers_process_group() {
    let world = World::new();
    for script in [
        "import os; os.setsid()",
        "import os; os.setpgid(0, 0)",
        "import subprocess; subprocess.run(['true'], start_new_session=True)",
    ] {
        let output = world.sandboxed(&["python3", "-c", script]).await;
        assert!(
            !output.status.success(),
            "{script} left the group:\n{}",
            text(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Operation not permitted"),
            "{}",
            text(&output)
        );
    }
    let mut policy = world.policy();
    policy.keep_process_group = false;
    let output = world
        .sandboxed_with(
            &policy,
            &[
                "python3",
                "-c",
                "import os; os.setsid(); print('own session')",
            ],
        )
        .await;
    assert_eq!(stdout(&output), "own session", "{}", text(&output));
}

#[tokio::test]
async fn ordinary_tool_work_still_works_in_the_sandbox() {
    let world = World::new();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["python3".into(), "-c".into(), "print(1)".into()], "1"),
        (
            vec![
                "python3".into(),
                "-c".into(),
                "import subprocess; subprocess.run(['ls', '/usr'], check=True, stdout=subprocess.DEVNULL); print('ran ls')".into(),
            ],
            "ran ls",
        ),
        (
            vec!["sh".into(), "-c".into(), "echo hello | tr a-z A-Z | sed s/L/l/g".into()],
            "HEllO",
        ),
        (
            vec![
                "python3".into(),
                "-c".into(),
                "import socket; a, b = socket.socketpair(); a.send(b'pair'); print(b.recv(4).decode())".into(),
            ],
            "pair",
        ),
        (
            vec![
                "python3".into(),
                "-c".into(),
                format!("import socket; socket.create_connection(('127.0.0.1', {port})); print('tcp')"),
            ],
            "tcp",
        ),
        (
            vec![
                "sh".into(),
                "-c".into(),
                "head -c 4 /dev/urandom | wc -c; grep -c processor /proc/cpuinfo >/dev/null && echo cpuinfo".into(),
            ],
            "4\ncpuinfo",
        ),
    ];
    for (argv, expected) in cases {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let output = world.sandboxed(&argv).await;
        assert!(output.status.success(), "{argv:?}\n{}", text(&output));
        assert_eq!(stdout(&output), expected, "{argv:?}\n{}", text(&output));
    }
}

#[tokio::test]
async fn the_reference_time_server_answers_in_the_sandbox() {
    let world = World::new();
    let installed = world
        .plain(&["python3", "-c", "import mcp_server_time"])
        .await;
    if !installed.status.success() {
        hermes_tests::skip::skip("mcp-server-time is not installed (pip install mcp-server-time)");
        return;
    }
    let sandbox = Sandbox::new(world.policy()).with_trampoline(TRAMPOLINE);
    let mut child = tokio::process::Command::new(&sandbox.trampoline)
        .args(sandbox.arguments("python3".as_ref()))
        .args(["-m", "mcp_server_time"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}
"#,
        )
        .await
        .unwrap();
    let answer = tokio::time::timeout(BOUND, lines.next_line())
        .await
        .expect("no answer to initialize")
        .unwrap()
        .unwrap_or_default();
    assert!(answer.contains("serverInfo"), "{answer}");
}

#[tokio::test]
async fn the_trampoline_refuses_a_policy_it_cannot_apply_and_runs_nothing() {
    let world = World::new();
    let marker = world.path("public/ran");
    let touch = format!("touch {}", marker.display());
    let policy = Policy {
        scratch: "relative/scratch".into(),
        ..world.policy()
    };
    let output = world.sandboxed_with(&policy, &["sh", "-c", &touch]).await;
    assert_eq!(
        output.status.code(),
        Some(sandbox::EXIT_SETUP),
        "{}",
        text(&output)
    );
    assert!(!marker.exists(), "the command ran unguarded");

    let mut garbage = tokio::process::Command::new(TRAMPOLINE);
    garbage.args([
        "sandbox-exec",
        "--policy-json",
        "{not json",
        "--",
        "sh",
        "-c",
        &touch,
    ]);
    let output = run(garbage).await;
    assert_eq!(
        output.status.code(),
        Some(sandbox::EXIT_SETUP),
        "{}",
        text(&output)
    );
    assert!(!marker.exists(), "the command ran unguarded");

    let output = world.sandboxed(&["/nonexistent/tool"]).await;
    assert_eq!(
        output.status.code(),
        Some(sandbox::EXIT_NOT_FOUND),
        "{}",
        text(&output)
    );
}

/// The seccomp layer by itself, as on a kernel without Landlock signal scoping (Debian
/// 12's 6.1): a forked child installs only the filter and tries to signal the protected
/// pid, its group, and every process (signal 0: nothing is sent either way).
#[test]
fn the_seccomp_filter_alone_protects_the_gateway_from_signals() {
    let gateway = sleeper(None);
    let pid = gateway.id() as i32;
    let filter = sandbox::seccomp::Filter::new(&[pid], None, false).unwrap();
    for (target, signal) in [(pid, 0), (-pid, 0), (-1, 0), (pid, libc::SIGTERM)] {
        // SAFETY: the child makes only raw system calls (prctl, kill) and _exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let code = match filter.install() {
                Err(_) => 2,
                // SAFETY: kill with plain integers.
                Ok(()) if unsafe { libc::kill(target, signal) } == 0 => 0,
                Ok(()) if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) => 1,
                Ok(()) => 3,
            };
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert_eq!(
            libc::WEXITSTATUS(status),
            1,
            "kill({target}, {signal}) under the filter alone was not refused with EPERM"
        );
    }
    assert!(World::alive(pid));
    let mut gateway = gateway;
    let _ = gateway.kill();
    let _ = gateway.wait();
}

/// The same for Unix sockets: the filter alone refuses them, socketpair excepted.
#[test]
fn the_seccomp_filter_alone_refuses_unix_sockets_but_not_socketpairs() {
    let filter = sandbox::seccomp::Filter::new(&[], None, false).unwrap();
    // SAFETY: as above: raw system calls, then _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = match filter.install() {
            Err(_) => 2,
            Ok(()) => unsafe {
                let mut pair = [0; 2];
                if libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) >= 0 {
                    3
                } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
                    4
                } else if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr())
                    != 0
                {
                    5
                } else if libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) < 0 {
                    6
                } else {
                    0
                }
            },
        };
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert_eq!(libc::WEXITSTATUS(status), 0, "see the codes in the child");
}

fn mcp_server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        cargo_build();
        target_profile_dir().join("mcp-server")
    })
}

#[tokio::test]
async fn the_toolbox_runs_its_servers_in_the_sandbox_and_calls_still_work() {
    let world = World::new();
    let pid_file = world.scratch().join("calc.pid");
    std::fs::create_dir_all(world.scratch()).unwrap();
    let spec = ToolServer {
        call_timeout_ms: 10_000,
        ..ToolServer::new(
            "calc",
            mcp_server().display().to_string(),
            vec!["--pid-file".into(), pid_file.display().to_string()],
        )
    };
    let mut toolbox = Toolbox::default();
    toolbox.set_sandbox(Some(
        Sandbox::new(world.policy()).with_trampoline(TRAMPOLINE),
    ));
    let deadline = Instant::now() + BOUND;
    toolbox.prepare(std::slice::from_ref(&spec), deadline).await;
    assert_eq!(
        toolbox.definitions().len(),
        6,
        "the server started under the sandbox"
    );

    let (events, _rx) = mpsc::unbounded_channel::<Event>();
    let call = |name: &str, arguments: &str| ToolCall {
        id: "call_1".into(),
        name: name.into(),
        arguments: arguments.into(),
    };
    let results = toolbox
        .call_all(
            &[call("calc__add", r#"{"a":2,"b":3}"#), call("calc__env", "")],
            deadline,
            &events,
        )
        .await
        .unwrap();
    assert_eq!(results[0].content, "5");
    let scratch = world.scratch().display().to_string();
    assert!(
        results[1]
            .content
            .lines()
            .any(|l| l == format!("TMPDIR={scratch}")),
        "{}",
        results[1].content
    );

    let read_pid = |file: &Path| -> i32 {
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let pid = read_pid(&pid_file);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "no filter on the server:\n{status}"
    );
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");

    // Pool mode: the same sandbox keeps the server for the next job; another replaces it.
    toolbox.prepare(std::slice::from_ref(&spec), deadline).await;
    assert_eq!(read_pid(&pid_file), pid, "same sandbox: same server");
    let mut other = world.policy();
    other.protected_pids.push(world.bystander_pid());
    toolbox.set_sandbox(Some(Sandbox::new(other).with_trampoline(TRAMPOLINE)));
    toolbox.prepare(std::slice::from_ref(&spec), deadline).await;
    assert_ne!(read_pid(&pid_file), pid, "another sandbox: a new server");
    toolbox.shutdown().await;
}

/// An entry's confinement adds to the worker's policy (a grant reaches the server); an
/// entry without one (`sandbox = false`) runs unconfined even in a sandboxed toolbox.
#[tokio::test]
async fn an_entrys_grant_reaches_its_server_and_an_opt_out_runs_unconfined() {
    use hermes_protocol::sandbox::Confinement;
    let world = World::new();
    let granted = world.path("public/granted");
    std::fs::create_dir(&granted).unwrap();
    let mut toolbox = Toolbox::default();
    toolbox.set_sandbox(Some(
        Sandbox::new(world.policy()).with_trampoline(TRAMPOLINE),
    ));
    let pids = |name: &str| world.path(&format!("public/granted/{name}.pid"));
    let confined = ToolServer {
        sandbox: Some(Confinement {
            writable: vec![granted.clone()],
            readable: vec![world.path("state")],
            ..Confinement::default()
        }),
        ..ToolServer::new(
            "confined",
            mcp_server().display().to_string(),
            vec!["--pid-file".into(), pids("confined").display().to_string()],
        )
    };
    let open = ToolServer {
        sandbox: None,
        ..ToolServer::new(
            "open",
            mcp_server().display().to_string(),
            vec!["--pid-file".into(), pids("open").display().to_string()],
        )
    };
    let deadline = Instant::now() + BOUND;
    toolbox.prepare(&[confined, open], deadline).await;
    assert_eq!(toolbox.definitions().len(), 12, "both servers started");
    let seccomp = |name: &str| {
        let pid = std::fs::read_to_string(pids(name)).unwrap();
        std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Seccomp:"))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(seccomp("confined"), "Seccomp:\t2");
    assert_eq!(seccomp("open"), "Seccomp:\t0");
    let (events, _rx) = mpsc::unbounded_channel::<Event>();
    let state = world.path("state/state.db").display().to_string();
    let results = toolbox
        .call_all(
            &[ToolCall::new(
                "call_1",
                "confined__shell",
                serde_json::json!({ "command": format!("cat {state}") }).to_string(),
            )],
            deadline,
            &events,
        )
        .await
        .unwrap();
    assert!(
        results[0].content.contains("every chat's history"),
        "the readable grant reaches the server: {}",
        results[0].content
    );
    toolbox.shutdown().await;
}

#[tokio::test]
async fn a_sandboxed_server_whose_command_is_missing_says_so() {
    let world = World::new();
    let spec = ToolServer {
        call_timeout_ms: 1_000,
        ..ToolServer::new("gone", "/nonexistent/mcp-server", Vec::new())
    };
    let sandbox = Sandbox::new(world.policy()).with_trampoline(TRAMPOLINE);
    let server = hermes_worker::tools::mcp::Server::start_in(&spec, Some(&sandbox), BOUND).await;
    assert_eq!(server.failure(), Some("its command was not found"));
}

#[tokio::test]
async fn the_probe_prints_what_this_kernel_allows() {
    let mut command = tokio::process::Command::new(TRAMPOLINE);
    command.args(["sandbox-probe", "--json"]);
    let output = run(command).await;
    let probe: sandbox::Probe =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&output)));
    assert_eq!(
        probe,
        sandbox::probe(),
        "the binary and the library disagree"
    );
    assert_eq!(probe.guarantees.len(), 4);
    assert_eq!(
        output.status.success(),
        probe.level() == sandbox::Level::Full,
        "{}",
        text(&output)
    );
    println!("{}", probe.summary);
}

/// x32 system-call numbers reach the same calls under numbers the rules do not name; the
/// filter refuses them all (on a kernel without x32 they would fail with ENOSYS instead).
#[cfg(target_arch = "x86_64")]
#[test]
fn the_seccomp_filter_refuses_x32_system_calls() {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    let filter = sandbox::seccomp::Filter::new(&[], None, false).unwrap();
    // SAFETY: as above: raw system calls, then _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = match filter.install() {
            Err(_) => 2,
            // SAFETY: getpid under its x32 number takes no arguments.
            Ok(()) if unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) } >= 0 => 3,
            Ok(()) => match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EPERM) => 0,
                Some(libc::ENOSYS) => 4,
                _ => 5,
            },
        };
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert_eq!(libc::WEXITSTATUS(status), 0, "see the codes in the child");
}

/// What systemd 252's `SystemCallFilter=@system-service` does to Landlock: its system
/// calls fail with EPERM. The probe must say so (never a silent weaker sandbox), and a
/// tool still starts, under seccomp.
#[tokio::test]
async fn under_a_filter_that_blocks_landlock_the_probe_says_so_and_tools_keep_seccomp() {
    fn block_landlock(command: &mut tokio::process::Command) {
        let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let nr = |n: libc::c_long| n as u32;
        let program = [
            insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
            insn(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                3,
                0,
                nr(libc::SYS_landlock_create_ruleset),
            ),
            insn(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                2,
                0,
                nr(libc::SYS_landlock_add_rule),
            ),
            insn(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                1,
                0,
                nr(libc::SYS_landlock_restrict_self),
            ),
            insn(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
            insn(libc::BPF_RET | libc::BPF_K, 0, 0, eperm),
        ];
        // SAFETY: between fork and exec the closure makes two prctl calls on memory it
        // owns (moved in), and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                let fprog = libc::sock_fprog {
                    len: program.len() as u16,
                    filter: program.as_ptr().cast_mut(),
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        &fprog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    let mut command = tokio::process::Command::new(TRAMPOLINE);
    command.args(["sandbox-probe", "--json"]);
    block_landlock(&mut command);
    let output = run(command).await;
    let probe: sandbox::Probe =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&output)));
    assert!(!output.status.success(), "a weaker sandbox exits 1");
    assert!(
        matches!(&probe.landlock, Landlock::Unavailable(why) if why.contains("SystemCallFilter")),
        "{probe}"
    );
    assert_ne!(probe.level(), sandbox::Level::Full);
    assert!(
        probe.summary.contains("SystemCallFilter"),
        "{}",
        probe.summary
    );

    let world = World::new();
    let sandbox = Sandbox::new(world.policy()).with_trampoline(TRAMPOLINE);
    let mut command = tokio::process::Command::new(&sandbox.trampoline);
    let script = format!("echo ran; kill -0 {}", world.gateway_pid());
    command
        .args(sandbox.arguments("sh".as_ref()))
        .args(["-c", &script]);
    block_landlock(&mut command);
    let output = run(command).await;
    assert_eq!(stdout(&output), "ran", "{}", text(&output));
    assert_refused(&output, "");
}

// Debian 12's kernel (Linux 6.1, Landlock ABI 2), emulated on this one: the policy caps
// Landlock at ABI 2, so the tool gets exactly the rights ABI 2 has and the fallbacks the
// trampoline makes up with there (a PID namespace for the signal scoping of ABI 6, the
// truncation filter for ABI 3's control). The VM test runs the real thing under systemd.

impl World {
    fn debian_12(&self) -> Policy {
        Policy {
            landlock_abi_limit: Some(2),
            ..self.policy()
        }
    }

    async fn on_debian_12(&self, argv: &[&str]) -> Output {
        self.sandboxed_with(&self.debian_12(), argv).await
    }
}

/// Refused by the PID namespace: the target does not exist as far as the tool can see.
fn assert_not_found(output: &Output) {
    assert!(
        !output.status.success(),
        "the attack worked:\n{}",
        text(output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("No such process"),
        "{}",
        text(output)
    );
}

#[tokio::test]
async fn with_debian_12s_landlock_a_tool_cannot_signal_another_job() {
    let world = World::new();
    let pid = world.bystander_pid().to_string();
    let plain = world.plain(&["kill", "-0", &pid]).await;
    assert!(plain.status.success(), "precondition\n{}", text(&plain));
    for signal in ["-TERM", "-STOP", "-KILL"] {
        assert_not_found(&world.on_debian_12(&["kill", signal, &pid]).await);
    }
    let group = format!("-{pid}");
    assert_not_found(&world.on_debian_12(&["kill", "-TERM", "--", &group]).await);
    let script = format!("import os; os.pidfd_open({pid})");
    assert_not_found(&world.on_debian_12(&["python3", "-c", &script]).await);
    assert!(
        World::alive(world.bystander_pid()),
        "the other job's process is gone or stopped"
    );
}

#[tokio::test]
async fn with_debian_12s_landlock_a_tool_sees_and_signals_only_its_own_processes() {
    let world = World::new();
    let output = world
        .on_debian_12(&[
            "sh",
            "-c",
            &format!("echo $$; sleep 30 & kill -TERM $! && wait $!; echo $?; {PRINT_NSPID}"),
        ])
        .await;
    assert!(output.status.success(), "{}", text(&output));
    // The tool server is its namespace's init, and its own child can be signalled.
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", text(&output));
    assert_eq!(&lines[..2], ["1", "143"], "{}", text(&output));
    assert_init_of_its_own_namespace(lines[2], &output);
}

/// Prints the shell's pids in each PID namespace it is in, the host's first (`NSpid`).
const PRINT_NSPID: &str =
    "while read key value; do [ \"$key\" = NSpid: ] && echo $value; done < /proc/self/status; true";

/// `nspid` (a [`PRINT_NSPID`] line) says pid 1 of a namespace below the host's.
fn assert_init_of_its_own_namespace(nspid: &str, output: &Output) {
    let pids: Vec<&str> = nspid.split_whitespace().collect();
    assert!(
        pids.len() == 2 && pids[1] == "1",
        "not in a PID namespace of its own: {}",
        text(output)
    );
}

#[tokio::test]
async fn with_debian_12s_landlock_a_tool_cannot_signal_the_workers_process_group() {
    let world = World::new();
    // kill(0, …) reaches the caller's whole process group, which the worker leads; from
    // a PID namespace as much as from outside one. Signal 0 sends nothing either way.
    let mut plain = tokio::process::Command::new("sh");
    plain.args(["-c", "kill -0 0"]).process_group(0);
    let plain = run(plain).await;
    assert!(plain.status.success(), "precondition\n{}", text(&plain));
    for policy in [world.policy(), world.debian_12()] {
        let sandbox = Sandbox::new(policy).with_trampoline(TRAMPOLINE);
        let mut command = tokio::process::Command::new(&sandbox.trampoline);
        command
            .args(sandbox.arguments("sh".as_ref()))
            .args(["-c", "kill -0 0"])
            .process_group(0);
        assert_refused(&run(command).await, "");
    }
}

#[tokio::test]
async fn with_debian_12s_landlock_a_tool_cannot_truncate_what_it_may_only_read() {
    let world = World::new();
    let readme = world.path("public/readme.txt");
    let victim = world.path("public/victim.txt");
    let truncations = [
        "import os, sys; os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC)",
        "import os, sys; os.truncate(sys.argv[1], 0)",
    ];
    for script in truncations {
        std::fs::write(&victim, "kept").unwrap();
        let victim = victim.display().to_string();
        let plain = world.plain(&["python3", "-c", script, &victim]).await;
        assert!(plain.status.success(), "precondition\n{}", text(&plain));
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "",
            "precondition"
        );
    }
    let readme = readme.display().to_string();
    for script in truncations {
        let output = world
            .on_debian_12(&["python3", "-c", script, &readme])
            .await;
        assert_refused(&output, "");
        assert_eq!(
            std::fs::read_to_string(&readme).unwrap(),
            "anyone may read this",
            "{script} truncated a file the tool may only read"
        );
    }
    // Truncating its own files still works: a file opened for writing, in the scratch.
    let output = world
        .on_debian_12(&[
            "python3",
            "-c",
            "f = open('own', 'w+'); f.write('abc'); f.truncate(1); f.close(); print(open('own').read())",
        ])
        .await;
    assert_eq!(stdout(&output), "a", "{}", text(&output));
}

#[tokio::test]
async fn with_debian_12s_landlock_the_other_attacks_still_fail() {
    let world = World::new();
    let environ = format!("/proc/{}/environ", world.gateway_pid());
    assert_refused(
        &world.on_debian_12(&["cat", &environ]).await,
        "stand-in-secret",
    );
    let state = world.path("state/state.db").display().to_string();
    assert_refused(
        &world.on_debian_12(&["cat", &state]).await,
        "every chat's history",
    );
    let outside = world.path("public/written");
    let write = format!("echo x > {}", outside.display());
    assert_refused(&world.on_debian_12(&["sh", "-c", &write]).await, "");
    assert!(!outside.exists(), "wrote outside the scratch directory");
    let connect = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); print('connected')",
        world.unix_path.display().to_string()
    );
    assert_refused(
        &world.on_debian_12(&["python3", "-c", &connect]).await,
        "connected",
    );
    let output = world
        .on_debian_12(&["python3", "-c", "import os; os.setsid()"])
        .await;
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Operation not permitted"),
        "{}",
        text(&output)
    );
    assert!(World::alive(world.gateway_pid()));
}

#[tokio::test]
async fn with_debian_12s_landlock_the_trampoline_passes_on_the_tools_exit_status() {
    let world = World::new();
    let output = world.on_debian_12(&["sh", "-c", "exit 7"]).await;
    assert_eq!(output.status.code(), Some(7), "{}", text(&output));
    let output = world.on_debian_12(&["/nonexistent/tool"]).await;
    assert_eq!(
        output.status.code(),
        Some(sandbox::EXIT_NOT_FOUND),
        "{}",
        text(&output)
    );
}

/// Started in a process group of its own (as a worker's), printing "up" once everything
/// it starts is running: a tool server whose children ignore SIGTERM.
fn stubborn_tool(world: &World) -> (std::process::Child, i32) {
    let sandbox = Sandbox::new(world.debian_12()).with_trampoline(TRAMPOLINE);
    let mut child = std::process::Command::new(&sandbox.trampoline)
        .args(sandbox.arguments("sh".as_ref()))
        .args(["-c", "trap '' TERM; sleep 300 & sleep 300 & echo up; wait"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), "up");
    let group = child.id() as i32;
    (child, group)
}

async fn gone(group: i32) -> bool {
    hermes_tests::harness::eventually(BOUND, || {
        hermes_tests::procs::live_group_members(group).is_empty()
    })
    .await
}

#[tokio::test]
async fn with_debian_12s_landlock_the_jobs_sigterm_ends_the_tool_and_all_it_started() {
    let world = World::new();
    let (mut child, group) = stubborn_tool(&world);
    assert_eq!(
        hermes_tests::procs::live_group_members(group).len(),
        4,
        "trampoline, tool, two sleeps"
    );
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + 9),
        "the tool was ended by SIGKILL"
    );
    assert!(
        gone(group).await,
        "left behind: {:?}",
        hermes_tests::procs::live_group_members(group)
    );
}

#[tokio::test]
async fn with_debian_12s_landlock_the_tool_dies_with_its_trampoline() {
    let world = World::new();
    let (mut child, group) = stubborn_tool(&world);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        gone(group).await,
        "left behind: {:?}",
        hermes_tests::procs::live_group_members(group)
    );
}

/// The service runs as an unprivileged user of its own (`DynamicUser=`), for whom making
/// and mapping the namespaces is a different check than for root (the tests above run as
/// root): here as `nobody`, the probe and the trampoline both.
#[tokio::test]
async fn with_debian_12s_landlock_an_unprivileged_user_gets_its_pid_namespace() {
    const NOBODY: u32 = 65534;
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let as_nobody = |command: &mut tokio::process::Command| {
        command.uid(NOBODY).gid(NOBODY).current_dir(home.path());
    };
    let mut probe = tokio::process::Command::new(TRAMPOLINE);
    probe.args(["sandbox-probe", "--json"]);
    as_nobody(&mut probe);
    let output = run(probe).await;
    let probe: sandbox::Probe =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output)));
    assert_eq!(
        probe.pid_namespace,
        sandbox::PidNamespace::Available,
        "{probe}"
    );

    let policy = Policy {
        scratch: home.path().join("scratch"),
        landlock_abi_limit: Some(2),
        ..Policy::default()
    };
    let sandbox = Sandbox::new(policy).with_trampoline(TRAMPOLINE);
    let mut command = tokio::process::Command::new(&sandbox.trampoline);
    command
        .args(sandbox.arguments("sh".as_ref()))
        .args(["-c", &format!("id -u; {PRINT_NSPID}")]);
    as_nobody(&mut command);
    let output = run(command).await;
    assert!(output.status.success(), "{}", text(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"65534"), "{}", text(&output));
    assert_init_of_its_own_namespace(lines.get(1).copied().unwrap_or(""), &output);
}
