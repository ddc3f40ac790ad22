//! Stop and reload signals, with who sent them.
//!
//! "Who stopped my bot?" deserves an exact answer, so signals are read with their
//! `siginfo`: the sender's pid (and, looked up at once, its command line) is logged and
//! recorded as the shutdown reason. A dedicated thread waits for signals (signal-hook's
//! iterator) and hands them to the async side over a channel.
//!
//! The sender's pid also says whether it is one of the gateway's own descendants (a
//! worker, or a tool a worker runs): such a stop or reload is ignored, with a warning
//! (`run`). That is defence in depth for tools running with `sandbox = false` or on a
//! kernel without the sandbox's filters; the sandbox itself refuses the signal. It cannot
//! cover SIGKILL or SIGSTOP, which no process can catch, nor a sender that exited before
//! its ancestry was read (`kill` run as a short-lived process): only the sandbox stops
//! those.

use std::fmt;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::SignalsInfo;
use signal_hook::iterator::exfiltrator::WithOrigin;
use tokio::sync::mpsc;

/// The signals the gateway listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    /// Reload the configuration.
    Hup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Hup => "SIGHUP",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub signal: Signal,
    pub sender_pid: Option<i32>,
    pub sender_command: Option<String>,
    /// The sender is a descendant of the gateway (a worker or something it runs).
    pub from_descendant: bool,
}

impl Received {
    pub fn is_reload(&self) -> bool {
        self.signal == Signal::Hup
    }
}

/// Why the gateway stopped, as the shutdown record says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Signal(Received),
    /// The thread that reads signals ended (it never should).
    ListenerGone,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Signal(received) => received.fmt(f),
            StopReason::ListenerGone => f.write_str("the signal listener stopped"),
        }
    }
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.signal.name())?;
        match (self.sender_pid, &self.sender_command) {
            (Some(pid), Some(cmd)) => write!(f, " from pid {pid} ({cmd})"),
            (Some(pid), None) => write!(f, " from pid {pid}"),
            _ => f.write_str(" (sender unknown)"),
        }
    }
}

/// Starts listening for SIGTERM, SIGINT and SIGHUP.
pub fn listen() -> std::io::Result<mpsc::UnboundedReceiver<Received>> {
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let gateway = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
            for origin in signals.forever() {
                let sender_pid = origin.process.map(|p| p.pid);
                let received = Received {
                    // First, while the sender most likely still exists.
                    from_descendant: sender_pid.is_some_and(|pid| descends_from(pid, gateway)),
                    signal: match origin.signal {
                        SIGTERM => Signal::Term,
                        SIGINT => Signal::Int,
                        _ => Signal::Hup,
                    },
                    sender_pid,
                    sender_command: sender_pid.and_then(command_line),
                };
                if tx.send(received).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// Whether `pid` is a descendant of `ancestor` (its child, grandchild, …), by its parent
/// chain in `/proc`. False when the chain cannot be read (the process is gone).
///
/// The chain may pass through a worker whose `/proc` entry the gateway cannot read: a
/// worker is non-dumpable, and under the unit's `ProtectProc=invisible` such a process of
/// the same user is invisible. So `ancestor`'s own children, which it can always list,
/// count as found once the chain reaches one of them.
pub fn descends_from(pid: i32, ancestor: i32) -> bool {
    let children = children_of(ancestor);
    let mut current = pid;
    // Deeper than any tool's process tree; bounds a chain that changes while read.
    for _ in 0..256 {
        if children.contains(&current) {
            return true;
        }
        let Some(parent) = parent_of(current) else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// The children of every thread of `pid` (`/proc/PID/task/TID/children`).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// The parent pid from `/proc/PID/stat` (the field after the state, past the command
/// name, which may itself hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `/proc/PID/cmdline` with NULs as spaces; None when the sender is already gone.
fn command_line(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = raw
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_sender() {
        let r = Received {
            signal: Signal::Term,
            sender_pid: Some(42),
            sender_command: Some("systemctl stop hermes-gateway".into()),
            from_descendant: false,
        };
        assert_eq!(
            r.to_string(),
            "SIGTERM from pid 42 (systemctl stop hermes-gateway)"
        );
        assert!(command_line(std::process::id() as i32).is_some());
    }

    #[test]
    fn a_grandchild_descends_from_this_process_and_the_parent_does_not() {
        let me = std::process::id() as i32;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let descends = descends_from(grandchild, me);
        let child_descends = descends_from(child.id() as i32, me);
        // What lets the walk past a worker it cannot read (ProtectProc=invisible).
        let listed = children_of(me).contains(&(child.id() as i32));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(grandchild),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        assert!(descends && child_descends && listed);
        assert!(!descends_from(nix::unistd::getppid().as_raw(), me));
        assert!(
            !descends_from(i32::MAX, me),
            "a process that does not exist"
        );
    }
}
