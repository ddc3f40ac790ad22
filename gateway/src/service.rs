//! `hermes-gateway service install|uninstall`: the systemd unit, written with this
//! machine's paths.
//!
//! The units in `deploy/` are the templates, compiled in: the generated unit is the
//! committed one with the binary and configuration paths replaced, so the two cannot
//! drift apart.

use std::path::{Path, PathBuf};
use std::process::Command;

use hermes_config::{Config, EXIT_CONFIG};

const SYSTEM_UNIT: &str = include_str!("../../deploy/hermes-gateway.service");
const USER_UNIT: &str = include_str!("../../deploy/hermes-gateway-user.service");
const UNIT_NAME: &str = "hermes-gateway.service";

/// The paths the committed units name, replaced on install.
pub const SYSTEM_BINARY: &str = "/usr/local/bin/hermes-gateway";
pub const SYSTEM_CONFIG: &str = "/etc/hermes/hermes.toml";
pub const USER_BINARY: &str = "%h/.local/bin/hermes-gateway";
pub const USER_CONFIG: &str = "%h/.config/hermes/hermes.toml";

/// The unit for `binary` and `config`.
pub fn render(user: bool, binary: &Path, config: &Path) -> String {
    let (template, default_binary, default_config) = if user {
        (USER_UNIT, USER_BINARY, USER_CONFIG)
    } else {
        (SYSTEM_UNIT, SYSTEM_BINARY, SYSTEM_CONFIG)
    };
    template
        .replace(default_binary, &binary.display().to_string())
        .replace(default_config, &config.display().to_string())
}

fn unit_path(user: bool) -> Result<PathBuf, String> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system").join(UNIT_NAME));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".config"))
            .ok_or("neither XDG_CONFIG_HOME nor HOME is set")?,
    };
    Ok(base.join("systemd/user").join(UNIT_NAME))
}

fn systemctl(user: bool, args: &[&str]) -> Result<(), String> {
    let mut command = Command::new("systemctl");
    if user {
        command.arg("--user");
    }
    let status = command
        .args(args)
        .status()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("systemctl {} failed ({status})", args.join(" ")))
    }
}

/// Why a command stopped: what to print, and the exit status.
struct Stopped {
    message: String,
    code: i32,
}

/// Exit status of a failure that is not the configuration's.
const EXIT_FAILED: i32 = 1;

fn failed(message: impl Into<String>) -> Stopped {
    Stopped {
        message: message.into(),
        code: EXIT_FAILED,
    }
}

fn exit_status(result: Result<(), Stopped>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(stopped) => {
            eprintln!("{}", stopped.message);
            stopped.code
        }
    }
}

pub fn install(user: bool, config: &Path, dry_run: bool) -> i32 {
    exit_status(try_install(user, config, dry_run))
}

fn try_install(user: bool, config: &Path, dry_run: bool) -> Result<(), Stopped> {
    let config = std::fs::canonicalize(config).map_err(|e| Stopped {
        message: format!("configuration file {}: {e}", config.display()),
        code: EXIT_CONFIG,
    })?;
    Config::load(&config).map_err(|e| Stopped {
        message: e.to_string(),
        code: EXIT_CONFIG,
    })?;
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| failed(format!("cannot locate this binary: {e}")))?;
    let unit = render(user, &binary, &config);
    let path = unit_path(user).map_err(failed)?;
    if dry_run {
        eprintln!("# would write {}", path.display());
        print!("{unit}");
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&path, unit)
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    systemctl(user, &["daemon-reload"]).map_err(failed)?;
    let scope = if user { "--user " } else { "" };
    println!("next: systemctl {scope}enable --now hermes-gateway");
    println!(
        "then: systemctl {scope}status hermes-gateway   (or: hermes-gateway status --config {})",
        config.display()
    );
    Ok(())
}

pub fn uninstall(user: bool, dry_run: bool) -> i32 {
    exit_status(try_uninstall(user, dry_run))
}

fn try_uninstall(user: bool, dry_run: bool) -> Result<(), Stopped> {
    let path = unit_path(user).map_err(failed)?;
    if dry_run {
        println!(
            "would stop and disable hermes-gateway, then remove {}",
            path.display()
        );
        return Ok(());
    }
    if !path.exists() {
        println!("{} is not installed", path.display());
        return Ok(());
    }
    if let Err(e) = systemctl(user, &["disable", "--now", "hermes-gateway"]) {
        eprintln!("{e} (removing the unit anyway)");
    }
    std::fs::remove_file(&path)
        .map_err(|e| failed(format!("cannot remove {}: {e}", path.display())))?;
    println!("removed {}", path.display());
    systemctl(user, &["daemon-reload"]).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_replaces_only_the_paths() {
        let unit = render(
            false,
            Path::new("/opt/h/hermes-gateway"),
            Path::new("/srv/h.toml"),
        );
        assert!(unit.contains("ExecStart=/opt/h/hermes-gateway run --config /srv/h.toml"));
        assert_eq!(
            unit.replace("/opt/h/hermes-gateway", SYSTEM_BINARY)
                .replace("/srv/h.toml", SYSTEM_CONFIG),
            SYSTEM_UNIT
        );
        let user = render(true, Path::new("/b"), Path::new("/c"));
        assert!(user.contains("ExecStart=/b run --config /c"));
        assert!(user.contains("WantedBy=default.target"));
    }

    #[test]
    fn every_directive_has_a_reason_above_it() {
        for unit in [SYSTEM_UNIT, USER_UNIT] {
            let lines: Vec<&str> = unit.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let directive = line.contains('=') && !line.starts_with('#');
                let obvious = line.starts_with("Description=") || line.starts_with("ExecStart=");
                if directive && !obvious {
                    let commented = lines[..i]
                        .iter()
                        .rev()
                        .take_while(|l| !l.trim().is_empty() && !l.starts_with('['))
                        .any(|l| l.starts_with('#'));
                    assert!(commented, "no comment explains {line:?}");
                }
            }
        }
    }
}
