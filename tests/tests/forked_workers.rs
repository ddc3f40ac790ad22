//! `per-request` workers forked from a template (`hermes-worker zygote`): each one is the
//! gateway's own child, in a process group of its own, shown as `hermes-worker serve`;
//! the template holds no job and its death touches no worker; a reload replaces it.
//!
//! Real binaries against the fake Telegram and provider on 127.0.0.1.

use std::time::Duration;

use hermes_config::WorkerMode;
use hermes_tests::fake_provider::ProviderReply;
use hermes_tests::harness::{PATIENCE, Rig, USER, eventually};
use hermes_tests::procs::{self, ProcInfo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

async fn rig() -> Rig {
    Rig::start(WorkerMode::PerRequest, |o| {
        o.pool_size = 1;
        o.memory_limit_mb = Some(MEMORY_LIMIT_MB);
    })
    .await
}

const MEMORY_LIMIT_MB: u64 = 700;

/// What the gateway puts on every worker (`child::confine`): a fork gets it from the
/// template, which the gateway confined, not from a write of its own per fork.
fn assert_confined(pid: i32) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l.split_whitespace()
                    .skip(name.split(' ').count())
                    .take(2)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let bytes = (MEMORY_LIMIT_MB * 1024 * 1024).to_string();
    assert_eq!(
        limit("Max address space"),
        [bytes.as_str(), bytes.as_str()],
        "{limits}"
    );
    assert_eq!(limit("Max core file size"), ["0", "0"], "{limits}");
    assert_eq!(limit("Max open files"), ["4096", "4096"], "{limits}");
    let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap_or_default();
    assert_eq!(score.trim(), "1000", "worker {pid}");
}

/// The gateway's one template, once there is exactly one.
async fn the_template(rig: &Rig) -> ProcInfo {
    let templates = || {
        procs::children_of(rig.pid)
            .into_iter()
            .filter(|p| !p.is_zombie() && p.cmdline.ends_with("hermes-worker zygote"))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(PATIENCE, || templates().len() == 1).await,
        "{:?}\n{}",
        procs::children_of(rig.pid),
        rig.gateway.log()
    );
    templates().remove(0)
}

/// The one worker waiting, once there is exactly one.
async fn the_spare(rig: &Rig) -> ProcInfo {
    assert!(
        eventually(PATIENCE, || rig.gateway.workers().len() == 1).await,
        "no spare waits: {:?}\n{}",
        rig.gateway.workers(),
        rig.gateway.log()
    );
    rig.gateway.workers().remove(0)
}

/// The top of a process's stack (where it grows down from): the same in a fork as in its
/// template, and chosen anew by every exec.
fn stack_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.ends_with("[stack]"))
        .and_then(|line| line.split([' ', '-']).nth(1).map(str::to_string))
        .unwrap_or_default()
}

/// The huge pages (`AnonHugePages`, KiB) of the process's executable mapping, the one
/// whose permissions are `r-xp` and that comes first: its code. The template moves its
/// code into anonymous huge pages (`code_pages`), so a fork has all of it mapped.
fn huge_code_kib(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut lines = smaps.lines();
    lines
        .find(|line| line.split(' ').nth(1) == Some("r-xp"))
        .and_then(|_| {
            lines
                .find(|line| line.starts_with("AnonHugePages:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Where the executable code of `pid` is mapped (the first `r-xp` mapping: the worker's
/// own, below its libraries).
fn code_range(pid: i32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let line = maps
        .lines()
        .find(|line| line.split(' ').nth(1) == Some("r-xp"))
        .unwrap_or_else(|| panic!("no code mapping in\n{maps}"));
    let (start, end) = line
        .split(' ')
        .next()
        .and_then(|range| range.split_once('-'))
        .unwrap_or_else(|| panic!("{line}"));
    let hex = |h: &str| u64::from_str_radix(h, 16).unwrap_or_else(|e| panic!("{h}: {e}"));
    (hex(start), hex(end))
}

/// Whether this kernel gives transparent huge pages to a mapping that asks for them.
fn huge_pages_on() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|modes| !modes.contains("[never]"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_code_is_in_huge_pages_and_a_fork_has_them_mapped() {
    let mut rig = rig().await;
    let template = the_template(&rig).await;
    let spare = the_spare(&rig).await;
    if !huge_pages_on() {
        assert_eq!(huge_code_kib(template.pid), 0);
        eprintln!("transparent huge pages are off here: the code stays mapped from its file");
        return;
    }
    assert!(huge_code_kib(template.pid) >= 2048, "{}", rig.gateway.log());
    assert_eq!(huge_code_kib(spare.pid), huge_code_kib(template.pid));
    // Linked to start and end on huge-page boundaries, and moved whole: no part of it in
    // small pages, whose entries every fork would copy and every exit unmap.
    let (start, end) = code_range(template.pid);
    assert_eq!(
        (start % (2 << 20), end % (2 << 20)),
        (0, 0),
        "{start:#x}-{end:#x}"
    );
    assert_eq!(rig.ask("hello").await.text, "echo: hello");
    rig.gateway.assert_running(rig.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_request_worker_is_a_fork_of_the_template_and_the_gateways_own_child() {
    let rig = rig().await;
    let spare = the_spare(&rig).await;
    let template = the_template(&rig).await;
    assert_eq!(spare.ppid, rig.pid, "the gateway's child: {spare:?}");
    assert_eq!(spare.pgid, spare.pid, "in a group of its own: {spare:?}");
    assert_eq!(template.pgid, template.pid, "{template:?}");
    assert!(spare.cmdline.ends_with("hermes-worker serve"), "{spare:?}");
    assert_confined(spare.pid);
    assert!(!stack_of(spare.pid).is_empty());
    assert_eq!(
        stack_of(spare.pid),
        stack_of(template.pid),
        "forked, not spawned"
    );
    assert_eq!(rig.ask("hello").await.text, "echo: hello");
    // The job's worker is gone, and the next is forked from the same template.
    assert!(
        eventually(PATIENCE, || {
            let w = rig.gateway.workers();
            w.len() == 1 && w[0].pid != spare.pid
        })
        .await,
        "{:?}",
        rig.gateway.workers()
    );
    let next = the_spare(&rig).await;
    assert_eq!(stack_of(next.pid), stack_of(template.pid));
    assert_confined(next.pid);
    assert_eq!(the_template(&rig).await.pid, template.pid);
    // The job's worker may still be on its way out (not yet a zombie).
    rig.assert_no_stray_processes().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_death_leaves_a_running_job_alone_and_the_next_worker_comes_from_a_new_one() {
    let mut rig = rig().await;
    let template = the_template(&rig).await;
    let spare = the_spare(&rig).await;
    rig.provider
        .push(ProviderReply::Delay(Duration::from_millis(1500)));
    rig.telegram.send_text(USER, USER, "slow one");
    assert!(rig.provider.wait_for_requests(1, PATIENCE).await);
    let _ = kill(Pid::from_raw(template.pid), Signal::SIGKILL);
    let reply = rig.telegram.wait_for_chat_messages(USER, 1, PATIENCE).await;
    assert_eq!(
        reply.first().map(|m| m.text.as_str()),
        Some("echo: slow one"),
        "{}",
        rig.gateway.log()
    );
    // The worker that ran it was forked before the kill: it finished its job.
    assert!(!rig.gateway.log().contains("crashed"));
    // The dead template is reaped at once, not left a zombie until the next start.
    assert!(
        eventually(PATIENCE, || procs::info(template.pid).is_none()).await,
        "{:?}",
        procs::info(template.pid)
    );
    // The next workers come from a new template.
    assert_eq!(rig.ask("again").await.text, "echo: again");
    assert_eq!(rig.ask("and again").await.text, "echo: and again");
    let new = the_template(&rig).await;
    assert_ne!(new.pid, template.pid);
    let next = the_spare(&rig).await;
    assert_ne!(next.pid, spare.pid);
    assert_eq!(
        stack_of(next.pid),
        stack_of(new.pid),
        "forked from the new one"
    );
    assert!(
        !rig.gateway.log().contains("spawning workers"),
        "{}",
        rig.gateway.log()
    );
    rig.gateway.assert_running(rig.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_template() {
    let rig = rig().await;
    let template = the_template(&rig).await;
    let spare = the_spare(&rig).await;
    rig.gateway.signal(Signal::SIGHUP);
    assert!(
        eventually(PATIENCE, || {
            let w = rig.gateway.workers();
            w.len() == 1
                && w[0].pid != spare.pid
                && the_template_pid(&rig).is_some_and(|pid| pid != template.pid)
        })
        .await,
        "{:?}\n{}",
        procs::children_of(rig.pid),
        rig.gateway.log()
    );
    assert!(
        procs::info(template.pid).is_none_or(|p| p.is_zombie()),
        "the old template is still there"
    );
    assert_eq!(rig.ask("after reload").await.text, "echo: after reload");
}

fn the_template_pid(rig: &Rig) -> Option<i32> {
    procs::children_of(rig.pid)
        .into_iter()
        .find(|p| !p.is_zombie() && p.cmdline.ends_with("hermes-worker zygote"))
        .map(|p| p.pid)
}
