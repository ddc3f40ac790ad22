//! Read-only views of /proc, so tests can check what the gateway did to its processes:
//! which workers exist, whether a killed worker's whole process group is gone, whether
//! anything was left behind as a zombie, what limits a process runs under, and how much
//! memory or how many threads it uses. Plain file reads, no extra crate: everything here
//! is Linux-only anyway.

use std::{ffi::OsStr, fs, os::unix::ffi::OsStrExt};

/// One process as seen in `/proc/PID/stat` and `/proc/PID/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// The session: the harness starts each gateway as a session leader, so every process
    /// descended from it (workers, tools, their children, orphans reparented to init)
    /// carries its pid here unless it called `setsid` itself.
    pub sid: i32,
    /// `R`, `S`, `D`, `Z` (zombie), `T`, ...
    pub state: char,
    /// Arguments joined with spaces; empty for kernel threads and zombies, and briefly
    /// empty for a process in the middle of `exec` (vfork-style spawns, which std uses,
    /// return to the parent before the kernel has set up the new arguments).
    pub cmdline: String,
}

impl ProcInfo {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Every process that could be read. Processes that exit while we scan are skipped.
pub fn all() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<ProcInfo> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(info)
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The process `pid`, or `None` if it does not exist (any more).
pub fn info(pid: i32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut info = parse_stat(&stat)?;
    info.cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(info)
}

/// Parse `/proc/PID/stat`. The command name sits in parentheses and may itself contain
/// spaces and parentheses, so the fixed fields start after the *last* `)`.
fn parse_stat(stat: &str) -> Option<ProcInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let pid = stat[..open].trim().parse().ok()?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgid = rest.next()?.parse().ok()?;
    let sid = rest.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgid,
        sid,
        state,
        cmdline: String::new(),
    })
}

/// Direct children of `pid`, zombies included.
pub fn children_of(pid: i32) -> Vec<ProcInfo> {
    all().into_iter().filter(|p| p.ppid == pid).collect()
}

/// Every process in process group `pgid`, zombies included (check `state`).
pub fn group_members(pgid: i32) -> Vec<ProcInfo> {
    all().into_iter().filter(|p| p.pgid == pgid).collect()
}

/// Processes in group `pgid` that are not zombies.
pub fn live_group_members(pgid: i32) -> Vec<ProcInfo> {
    all()
        .into_iter()
        .filter(|p| p.pgid == pgid && !p.is_zombie())
        .collect()
}

/// Live (not zombie) processes of session `sid`.
pub fn live_in_session(sid: i32) -> Vec<ProcInfo> {
    all()
        .into_iter()
        .filter(|p| p.sid == sid && !p.is_zombie())
        .collect()
}

/// Live processes whose environment contains `name=value`: the way to find every process
/// descended from one gateway's workers, even orphans reparented elsewhere, since children
/// inherit the environment. This is the environment at `exec`; zombies have none, so they
/// never match. Only processes we may read (same user, or root) are seen.
pub fn with_env(name: &str, value: impl AsRef<OsStr>) -> Vec<ProcInfo> {
    let mut wanted = name.as_bytes().to_vec();
    wanted.push(b'=');
    wanted.extend_from_slice(value.as_ref().as_bytes());
    all()
        .into_iter()
        .filter(|p| {
            fs::read(format!("/proc/{}/environ", p.pid))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == wanted))
        })
        .collect()
}

/// Resident set size in KiB (`VmRSS`); `None` if the process is gone or is a zombie.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_field(pid, "VmRSS")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time used, in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 on Linux): the process's
/// own user + system time, and that of its children it has waited for (`cutime + cstime`).
/// `None` if the process is gone.
pub fn cpu_ticks(pid: i32) -> Option<CpuTicks> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name: state is field 3, utime 14, stime 15, cutime 16,
    // cstime 17 (1-based, as in proc(5)).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let [utime, stime, cutime, cstime] = fields[..] else {
        return None;
    };
    Some(CpuTicks {
        own: utime + stime,
        reaped_children: cutime + cstime,
    })
}

/// See [`cpu_ticks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub own: u64,
    pub reaped_children: u64,
}

/// Busy and total clock ticks of the whole machine, from the `cpu` line of /proc/stat.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// One resource limit of a process, as `/proc/PID/limits` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// A number, or `unlimited`.
    pub soft: String,
    pub hard: String,
}

/// The limit called `name` (`Max address space`, `Max open files`, `Max core file size`,
/// …) of process `pid`; `None` if the process or the line is gone.
pub fn limit(pid: i32, name: &str) -> Option<Limit> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find_map(|l| l.strip_prefix(name))?;
    let mut values = line.split_whitespace();
    Some(Limit {
        soft: values.next()?.to_string(),
        hard: values.next()?.to_string(),
    })
}

/// Whether process `pid` ignores `signal` (`SigIgn` in /proc/PID/status).
pub fn ignores(pid: i32, signal: nix::sys::signal::Signal) -> bool {
    status_field(pid, "SigIgn")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

/// Number of threads (`Threads` in /proc/PID/status).
pub fn threads(pid: i32) -> Option<u64> {
    status_field(pid, "Threads")?.trim().parse().ok()
}

fn status_field(pid: i32, name: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let p = parse_stat("42 (a) b (c)) S 1 42 40 0 -1 4194560 0 0").unwrap();
        assert_eq!(
            (p.pid, p.state, p.ppid, p.pgid, p.sid),
            (42, 'S', 1, 42, 40)
        );
        let p = parse_stat("7 (x y) Z 3 5 5 0").unwrap();
        assert!(p.is_zombie());
        assert_eq!((p.ppid, p.pgid), (3, 5));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn current_process() {
        let me = info(std::process::id() as i32).expect("own /proc entry");
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(me.pgid, nix::unistd::getpgrp().as_raw());
        assert_eq!(
            me.sid,
            nix::unistd::getsid(None).map(|s| s.as_raw()).unwrap_or(-1)
        );
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let shown = |n: u64| {
            if n == nix::sys::resource::RLIM_INFINITY {
                "unlimited".to_string()
            } else {
                n.to_string()
            }
        };
        assert_eq!(
            limit(me.pid, "Max open files"),
            Some(Limit {
                soft: shown(soft),
                hard: shown(hard)
            })
        );
        assert_eq!(limit(me.pid, "Max nonsense"), None);
        assert!(!me.cmdline.is_empty());
        assert!(rss_kib(me.pid).unwrap() > 0);
        assert!(threads(me.pid).unwrap() >= 1);
        assert!(cpu_ticks(me.pid).is_some());
        let (busy, total) = machine_ticks().unwrap();
        assert!(busy <= total && total > 0);
        assert!(all().iter().any(|p| p.pid == me.pid));
        assert!(info(i32::MAX).is_none());
        // The test harness ignores SIGPIPE (as every Rust program does), not SIGTERM.
        assert!(ignores(me.pid, nix::sys::signal::Signal::SIGPIPE));
        assert!(!ignores(me.pid, nix::sys::signal::Signal::SIGTERM));
    }

    #[test]
    fn spawned_child_is_visible() {
        let me = std::process::id() as i32;
        let marker = format!("marker-{me}");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .env("HERMES_PROCS_TEST", &marker)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let pgid = nix::unistd::getpgrp().as_raw();

        let kid = children_of(me).into_iter().find(|p| p.pid == pid);
        let in_group = group_members(pgid).iter().any(|p| p.pid == pid);
        let live = live_group_members(pgid).iter().any(|p| p.pid == pid);
        // The arguments and environment appear a moment after spawn returns (see
        // `ProcInfo::cmdline`), and /proc offers no event to wait for, so spin briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let cmdline = loop {
            let cmdline = info(pid).map(|p| p.cmdline).unwrap_or_default();
            if !cmdline.is_empty() || std::time::Instant::now() > deadline {
                break cmdline;
            }
            std::thread::yield_now();
        };
        let sid = nix::unistd::getsid(None).map(|s| s.as_raw()).unwrap_or(-1);
        let in_session = live_in_session(sid).iter().any(|p| p.pid == pid);
        let by_env: Vec<i32> = with_env("HERMES_PROCS_TEST", &marker)
            .iter()
            .map(|p| p.pid)
            .collect();
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");

        let kid = kid.expect("sleep is our child");
        assert_eq!(kid.ppid, me);
        assert_eq!(kid.pgid, pgid);
        assert!(
            kid.cmdline == "sleep 5" || kid.cmdline.is_empty(),
            "{kid:?}"
        );
        assert_eq!(cmdline, "sleep 5");
        assert!(in_group);
        assert!(live);
        assert!(in_session, "sleep is in our session");
        assert_eq!(by_env, vec![pid]);
        assert!(with_env("HERMES_PROCS_TEST", &marker).is_empty());
        assert!(info(pid).is_none());
    }
}
