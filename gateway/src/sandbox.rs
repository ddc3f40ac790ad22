//! The gateway's half of the tool sandbox (issue 11): what each tool server must not reach,
//! decided here because only the gateway knows it, and what this machine lets the sandbox
//! apply, said out loud.
//!
//! The worker applies the sandbox (`hermes_worker::sandbox`); the gateway tells it, in
//! every job's tool-server specs, what to hide and whom to protect: the state directory
//! (the conversations), the runtime directory (the worker socket, the other workers'
//! scratch directories), the configuration file, every secret file it names, systemd's
//! credentials directory, every directory `service install` stores credentials in (a
//! user install's are plaintext files), and the gateway's own pid. That is computed once per settings
//! snapshot ([`confine`], from `setup::resolve`), so a reload recomputes it with the rest.
//!
//! What the kernel provides is found by running the configured worker binary's
//! `sandbox-probe --json` ([`probe`]): a subprocess, so Landlock and seccomp stay out of the
//! gateway's own code, and the very binary that will apply the sandbox is the one asked.
//! Start-up logs one line per weaker guarantee (as soon as the probe answers, beside the
//! rest of start-up: a warning when a tool is configured, information while none is),
//! `status` and `check-config` show the summary; a probe that cannot be run is itself a
//! warning. Never silently unguarded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hermes_config::{Config, absolute};
use hermes_protocol::ToolServer;
use hermes_protocol::sandbox::Probe;
use serde::{Deserialize, Serialize};

/// A probe that has not answered by then is reported as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The probe's address space: ample for a binary that forks twice and exits.
const PROBE_MEMORY: u64 = 1 << 30;

/// Fills in what every sandboxed server of `tools` must not reach: `hidden` (from the
/// configuration: its file, secret files, credentials directory) plus the state and
/// runtime directories, every directory `service install` may have stored credentials
/// in (system or user, whichever unit runs) and every directory any other instance on the
/// host may keep (`instances::every_instance_dir`), and the gateway's pid to protect. Entries
/// with `sandbox = false` are left as they are (unconfined).
pub fn confine(tools: &mut [ToolServer], state_dir: &Path, runtime_dir: &Path) {
    let gateway = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    for confinement in tools.iter_mut().filter_map(|t| t.sandbox.as_mut()) {
        let mut hidden: Vec<PathBuf> = confinement
            .hidden
            .iter()
            .cloned()
            .chain([absolute(state_dir), absolute(runtime_dir)])
            .chain(crate::service::stored_credentials_dirs())
            // Every bot's on this host, not only this one's (issue 24).
            .chain(crate::instances::every_instance_dir())
            .collect();
        hidden.sort();
        hidden.dedup();
        confinement.hidden = hidden;
        if !confinement.protected_pids.contains(&gateway) {
            confinement.protected_pids.push(gateway);
        }
    }
}

/// The `[[tools.mcp]]` entries that opted out of the sandbox, by name.
pub fn opted_out(config: &Config) -> Vec<&str> {
    config
        .tools
        .mcp
        .iter()
        .filter(|m| !m.sandbox)
        .map(|m| m.name.as_str())
        .collect()
}

/// Logs a warning naming each entry that runs unconfined: at start-up and on every reload,
/// so an opt-out is never forgotten.
pub fn warn_opted_out(config: &Config) {
    for name in opted_out(config) {
        tracing::warn!(
            "tool server {name:?} runs WITHOUT the sandbox (sandbox = false): it can read the \
             gateway's state, configuration and secrets and signal its processes as the \
             service's user may"
        );
    }
}

/// What the configured worker's probe said, or why it could not say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Probed(Probe),
    Failed(String),
}

impl Report {
    /// One line for `status` and `check-config`.
    pub fn summary(&self) -> String {
        match self {
            Report::Probed(probe) => probe.summary.clone(),
            Report::Failed(why) => format!(
                "tool sandbox: unknown, the probe failed ({why}); tools still start only \
                 through the sandbox, which applies what this kernel allows"
            ),
        }
    }

    /// The lines to warn about: each weaker guarantee, or the failed probe.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Report::Probed(probe) => probe.weaker(),
            Report::Failed(_) => vec![self.summary()],
        }
    }

    /// Logs the summary (info when every guarantee holds) and one line per weaker one: a
    /// warning when `tools` are configured, else information (with no tool, nothing runs
    /// under the sandbox, and an operator's warning log stays for what needs acting on).
    /// A probe that failed is a warning either way: the worker binary itself is in doubt.
    pub fn log(&self, tools: bool) {
        let warnings = self.warnings();
        if warnings.is_empty() {
            tracing::info!("{}", self.summary());
        }
        for line in warnings {
            if tools || matches!(self, Report::Failed(_)) {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line} (no tool is configured: nothing runs under it yet)");
            }
        }
    }
}

/// Runs `worker sandbox-probe --json` and reads its record. The probe exits 1 when a
/// guarantee is weaker; its record says which, so only a missing or unreadable record is a
/// failure.
pub async fn probe(worker: &Path) -> Report {
    let mut command = tokio::process::Command::new(worker);
    command
        .args(["sandbox-probe", "--json"])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own group, as a worker's: whatever ends a group of the gateway's children
        // must never reach the gateway's own.
        .process_group(0)
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Report::Failed(format!("cannot run {}: {e}", worker.display())),
    };
    // It runs the worker binary, which may misbehave as a worker can: first for the OOM
    // killer, as a worker is, and a binary that is not what it should be must not take the
    // machine's memory.
    if let Some(pid) = child.id()
        && let Err(e) = crate::child::confine(pid, PROBE_MEMORY)
    {
        return Report::Failed(format!(
            "cannot limit {} sandbox-probe: {e}",
            worker.display()
        ));
    }
    let run = child.wait_with_output();
    let output = match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Report::Failed(format!("cannot run {}: {e}", worker.display())),
        Err(_) => {
            return Report::Failed(format!(
                "{} sandbox-probe did not answer within {PROBE_TIMEOUT:?}",
                worker.display()
            ));
        }
    };
    match serde_json::from_slice::<Probe>(&output.stdout) {
        Ok(probe) => Report::Probed(probe),
        Err(e) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Report::Failed(format!(
                "{} sandbox-probe exited with {} and no readable record ({e}){}",
                worker.display(),
                output.status,
                stderr
                    .lines()
                    .next()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ))
        }
    }
}

/// [`probe`] for the synchronous commands (`check-config`).
pub fn probe_blocking(worker: &Path) -> Report {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(probe(worker)),
        Err(e) => Report::Failed(format!("cannot start a runtime to run the probe: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermes_protocol::sandbox::Confinement;

    #[test]
    fn sandboxed_servers_hide_the_gateways_directories_and_protect_its_pid() {
        let mut tools = vec![
            ToolServer {
                sandbox: Some(Confinement {
                    hidden: vec!["/etc/hermes/hermes.toml".into()],
                    readable: vec!["/srv/docs".into()],
                    ..Confinement::default()
                }),
                ..ToolServer::new("files", "x", Vec::new())
            },
            ToolServer {
                sandbox: None,
                ..ToolServer::new("shell", "y", Vec::new())
            },
        ];
        confine(
            &mut tools,
            Path::new("/var/lib/hermes"),
            Path::new("/run/hermes"),
        );
        let confinement = tools[0].sandbox.as_ref().expect("still sandboxed");
        for hidden in [
            "/etc/hermes/hermes.toml",
            "/var/lib/hermes",
            "/run/hermes",
            "/etc/hermes/credentials",
        ] {
            assert!(
                confinement.hidden.contains(&PathBuf::from(hidden)),
                "{confinement:?}"
            );
        }
        assert_eq!(confinement.readable, [PathBuf::from("/srv/docs")]);
        assert_eq!(confinement.protected_pids, [std::process::id() as i32]);
        assert_eq!(tools[1].sandbox, None, "an opt-out stays one");
        confine(&mut tools, Path::new("state"), Path::new("state/run"));
        let confinement = tools[0].sandbox.as_ref().expect("still sandboxed");
        assert!(confinement.hidden.iter().all(|p| p.is_absolute()));
        assert_eq!(confinement.protected_pids.len(), 1, "the pid once");
    }

    #[tokio::test]
    async fn a_probe_that_cannot_run_is_a_warning_not_silence() {
        let report = probe(Path::new("/nonexistent/hermes-worker")).await;
        assert!(matches!(report, Report::Failed(_)), "{report:?}");
        let warnings = report.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("unknown"), "{warnings:?}");
    }
}
