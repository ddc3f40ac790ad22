//! Stop and reload signals, with who sent them.
//!
//! "Who stopped my bot?" deserves an exact answer, so signals are read with their
//! `siginfo`: the sender's pid (and, looked up at once, its command line) is logged and
//! recorded as the shutdown reason. A dedicated thread waits for signals (signal-hook's
//! iterator) and hands them to the async side over a channel.

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
            for origin in signals.forever() {
                let sender_pid = origin.process.map(|p| p.pid);
                let received = Received {
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
        };
        assert_eq!(
            r.to_string(),
            "SIGTERM from pid 42 (systemctl stop hermes-gateway)"
        );
        assert!(command_line(std::process::id() as i32).is_some());
    }
}
