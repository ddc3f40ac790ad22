//! What the gateway and the worker agree on about the tool sandbox: the confinement a job
//! carries for each tool server (computed once per settings snapshot by the gateway, which
//! alone knows its own pid, directories and secret files), and the record
//! `hermes-worker sandbox-probe --json` prints (read by the gateway for its log, `status`
//! and `check-config`, so the probe's mechanisms never have to be linked into it).
//!
//! How the sandbox is applied is the worker's business (`hermes_worker::sandbox`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a sandboxed tool server may not reach, and what it may besides the defaults. The
/// worker adds its own scratch directory (the tool's working directory and `TMPDIR`) and
/// its own pid to the protected ones.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// Neither readable, writable nor executable, nor anything beneath them: the
    /// gateway's state and runtime directories, its configuration file, the secret files
    /// it names, the systemd credentials directory. Absolute paths.
    pub hidden: Vec<PathBuf>,
    /// Readable and executable, even inside a hidden path (`[[tools.mcp]] readable`).
    pub readable: Vec<PathBuf>,
    /// Readable, writable and executable, even inside a hidden path
    /// (`[[tools.mcp]] writable`).
    pub writable: Vec<PathBuf>,
    /// Processes the tool may not signal, trace, re-limit or open a pidfd to: the
    /// gateway's.
    pub protected_pids: Vec<i32>,
}

/// Landlock on this system, as the probe found it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Landlock {
    /// The ABI the sandbox uses: the kernel's, capped at the newest one it was tested on.
    Abi(u32),
    /// Why it cannot be used.
    Unavailable(String),
}

/// A PID namespace of the tool's own (a user namespace with it, so no privilege is
/// needed), as the probe found it: where Landlock cannot scope signals (ABI < 6), what
/// keeps a tool from seeing or signalling any process outside its job.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PidNamespace {
    Available,
    /// Why one cannot be made.
    Unavailable(String),
}

impl Default for PidNamespace {
    fn default() -> Self {
        PidNamespace::Unavailable("not probed".into())
    }
}

/// seccomp on this system, as the probe found it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    Available,
    /// Why the filter cannot be installed.
    Unavailable(String),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    None,
    Weaker,
    Full,
}

/// One of issue 11's guarantees, as this system can keep it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Guarantee {
    /// Its number in issue 11 (1 to 4).
    pub number: u8,
    pub what: String,
    pub level: Level,
    /// The mechanisms that keep it, or what is missing and what that leaves open.
    pub why: String,
}

/// What the sandbox can apply on this system, and so which guarantee holds how well.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub landlock: Landlock,
    /// Landlock ABI 6: no signal to a process outside the tool's domain.
    pub signal_scope: bool,
    /// Landlock ABI 6: no connection to an abstract Unix socket made outside it.
    pub abstract_socket_scope: bool,
    pub seccomp: Seccomp,
    #[serde(default)]
    pub pid_namespace: PidNamespace,
    pub guarantees: Vec<Guarantee>,
    /// The whole in one line, for a log.
    pub summary: String,
}

impl Probe {
    /// The weakest level among the guarantees.
    pub fn level(&self) -> Level {
        self.guarantees
            .iter()
            .map(|g| g.level)
            .min()
            .unwrap_or(Level::None)
    }

    /// The guarantees that do not hold in full, each as one line for a log.
    pub fn weaker(&self) -> Vec<String> {
        self.guarantees
            .iter()
            .filter(|g| g.level != Level::Full)
            .map(|g| {
                format!(
                    "tool sandbox guarantee {} ({}) is {}: {}",
                    g.number, g.what, g.level, g.why
                )
            })
            .collect()
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Full => "full",
            Level::Weaker => "weaker",
            Level::None => "not kept",
        })
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.landlock {
            Landlock::Abi(abi) => writeln!(
                f,
                "Landlock: ABI {abi}{}",
                if self.signal_scope {
                    " (signal and abstract Unix socket scoping)"
                } else {
                    " (no scoping: needs ABI 6)"
                }
            )?,
            Landlock::Unavailable(reason) => writeln!(f, "Landlock: unavailable, {reason}")?,
        }
        match &self.seccomp {
            Seccomp::Available => writeln!(f, "seccomp: yes")?,
            Seccomp::Unavailable(reason) => writeln!(f, "seccomp: unavailable, {reason}")?,
        }
        match &self.pid_namespace {
            PidNamespace::Available => writeln!(f, "PID namespace: yes")?,
            PidNamespace::Unavailable(reason) => {
                writeln!(f, "PID namespace: unavailable, {reason}")?
            }
        }
        for g in &self.guarantees {
            writeln!(f, "{}. a tool {}: {}: {}", g.number, g.what, g.level, g.why)?;
        }
        write!(f, "{}", self.summary)
    }
}
