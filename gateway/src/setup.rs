//! Turning a validated configuration into what the running gateway needs: secrets read,
//! the worker binary found, directories chosen. `run`, a reload and `check-config` all
//! judge a file with it (through `hermes_config::load_or_report`), so they agree on what
//! is wrong with one.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hermes_config::{Config, Problem};
use hermes_protocol::{ProviderPlan, Secret, ToolServer, TranscriptionPlan};

pub struct Setup {
    pub token: Secret,
    pub providers: Vec<ProviderPlan>,
    /// MCP servers with their passed-through variables read, and what their sandbox
    /// hides and protects.
    pub tools: Vec<ToolServer>,
    /// `[transcription]` with its provider's key read.
    pub transcription: Option<TranscriptionPlan>,
    pub worker_program: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

/// Everything about `config` that can only be checked against this machine: secrets,
/// the worker binary. All problems are returned, not just the first.
pub fn resolve(config: &Config) -> Result<Setup, Vec<Problem>> {
    let mut problems = Vec::new();
    let token = config
        .telegram
        .token
        .resolve()
        .map_err(|p| problems.push(p))
        .ok();
    let plans = config.job_plans().map_err(|p| problems.extend(p)).ok();
    let worker_program = worker_program(config).map_err(|p| problems.push(p)).ok();
    let (Some(token), Some(plans), Some(worker_program)) = (token, plans, worker_program) else {
        return Err(problems);
    };
    let state_dir = state_dir(config);
    let runtime_dir = std::env::var_os("RUNTIME_DIRECTORY")
        .map(|d| PathBuf::from(first_path(&d.to_string_lossy())))
        .unwrap_or_else(|| state_dir.join("run"));
    let mut tools = plans.tools;
    crate::sandbox::confine(&mut tools, &state_dir, &runtime_dir);
    Ok(Setup {
        token,
        providers: plans.providers,
        tools,
        transcription: plans.transcription,
        worker_program,
        state_dir,
        runtime_dir,
    })
}

/// `state.dir`, else systemd's `$STATE_DIRECTORY`, else `./state`.
pub fn state_dir(config: &Config) -> PathBuf {
    if let Some(dir) = &config.state.dir {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(first_path(&dir.to_string_lossy()));
    }
    PathBuf::from("state")
}

/// systemd joins several directories with ':'; the first is ours.
pub(crate) fn first_path(list: &str) -> &str {
    list.split(':').next().unwrap_or(list)
}

/// `workers.command`, else `hermes-worker` beside this binary.
fn worker_program(config: &Config) -> Result<PathBuf, Problem> {
    let (path, key) = match &config.workers.command {
        Some(command) => (command.clone(), "workers.command"),
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("hermes-worker")));
            match beside {
                Some(p) => (p, "workers.command (default)"),
                None => {
                    return Err(Problem {
                        line: None,
                        key: "workers.command".into(),
                        message: "cannot locate this binary's directory; set workers.command"
                            .into(),
                    });
                }
            }
        }
    };
    let path = if path.components().count() == 1 && !path.exists() {
        search_path(&path).unwrap_or(path)
    } else {
        path
    };
    // Absolute, so spawning it never searches PATH (and std can use posix_spawn).
    let path = std::path::absolute(&path).unwrap_or(path);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(Problem {
            line: None,
            key: key.into(),
            message: format!("{} is not an executable file", path.display()),
        }),
        Err(e) => Err(Problem {
            line: None,
            key: key.into(),
            message: format!("worker program {}: {e}", path.display()),
        }),
    }
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
