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

pub fn install(user: bool, config: &Path, dry_run: bool) -> i32 {
    let config = match std::fs::canonicalize(config) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("configuration file {}: {e}", config.display());
            return EXIT_CONFIG;
        }
    };
    if let Err(e) = Config::load(&config) {
        eprintln!("{e}");
        return EXIT_CONFIG;
    }
    let binary = match std::env::current_exe().and_then(std::fs::canonicalize) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("cannot locate this binary: {e}");
            return 1;
        }
    };
    let unit = render(user, &binary, &config);
    let path = match unit_path(user) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if dry_run {
        eprintln!("# would write {}", path.display());
        print!("{unit}");
        return 0;
    }
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("cannot create {}: {e}", dir.display());
        return 1;
    }
    if let Err(e) = std::fs::write(&path, unit) {
        eprintln!("cannot write {}: {e}", path.display());
        return 1;
    }
    println!("wrote {}", path.display());
    if let Err(e) = systemctl(user, &["daemon-reload"]) {
        eprintln!("{e}");
        return 1;
    }
    let scope = if user { "--user " } else { "" };
    println!("next: systemctl {scope}enable --now hermes-gateway");
    println!(
        "then: systemctl {scope}status hermes-gateway   (or: hermes-gateway status --config {})",
        config.display()
    );
    0
}

pub fn uninstall(user: bool, dry_run: bool) -> i32 {
    let path = match unit_path(user) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if dry_run {
        println!(
            "would stop and disable hermes-gateway, then remove {}",
            path.display()
        );
        return 0;
    }
    if !path.exists() {
        println!("{} is not installed", path.display());
        return 0;
    }
    if let Err(e) = systemctl(user, &["disable", "--now", "hermes-gateway"]) {
        eprintln!("{e} (removing the unit anyway)");
    }
    if let Err(e) = std::fs::remove_file(&path) {
        eprintln!("cannot remove {}: {e}", path.display());
        return 1;
    }
    println!("removed {}", path.display());
    if let Err(e) = systemctl(user, &["daemon-reload"]) {
        eprintln!("{e}");
        return 1;
    }
    0
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
