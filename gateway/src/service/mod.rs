//! `hermes-gateway service install|uninstall`: the systemd unit, written with this
//! machine's paths and the configuration's secrets and limits.
//!
//! The units in `deploy/` are the templates, compiled in: the generated unit is the
//! committed one with the binary, configuration and credentials paths replaced, the
//! `LoadCredential…=` block generated for the secrets the configuration names
//! ([`credentials`]), and `TimeoutStopSec=` derived from the configuration's drain
//! ([`limits`]), so the two cannot drift apart. A test keeps them identical for the
//! README's configuration.
//! One bot of several on the host is an instance of the template unit ([`instance`]).

mod credentials;
mod instance;
mod limits;

use instance::TEMPLATE_NAME;
pub use instance::{install_instance, uninstall_instance};
use limits::seconds_of;
pub use limits::{STOP_MARGIN_SECS, stop_timeout_secs, unit_limits_warnings};

use std::path::{Path, PathBuf};
use std::process::Command;

use hermes_config::{Config, EXIT_CONFIG};

use credentials::{Credential, Host};

const SYSTEM_UNIT: &str = include_str!("../../../deploy/hermes-gateway.service");
const USER_UNIT: &str = include_str!("../../../deploy/hermes-gateway-user.service");
const UNIT_NAME: &str = "hermes-gateway.service";

/// The paths the committed units name, replaced on install.
pub const SYSTEM_BINARY: &str = "/usr/local/bin/hermes-gateway";
pub const SYSTEM_CONFIG: &str = "/etc/hermes/hermes.toml";
pub const SYSTEM_CREDENTIALS: &str = "/etc/hermes/credentials";
pub const USER_BINARY: &str = "%h/.local/bin/hermes-gateway";
pub const USER_CONFIG: &str = "%h/.config/hermes/hermes.toml";
pub const USER_CREDENTIALS: &str = "%h/.config/hermes/credentials";

/// Where the system unit keeps state (`StateDirectory=hermes`).
pub const SYSTEM_STATE: &str = "/var/lib/hermes";

/// What differs between the system and the user unit.
struct Kind {
    template: &'static str,
    binary: &'static str,
    config: &'static str,
    credentials: &'static str,
}

fn kind(user: bool) -> Kind {
    if user {
        Kind {
            template: USER_UNIT,
            binary: USER_BINARY,
            config: USER_CONFIG,
            credentials: USER_CREDENTIALS,
        }
    } else {
        Kind {
            template: SYSTEM_UNIT,
            binary: SYSTEM_BINARY,
            config: SYSTEM_CONFIG,
            credentials: SYSTEM_CREDENTIALS,
        }
    }
}

/// Where this machine's paths go in the unit.
pub struct Paths<'a> {
    pub binary: &'a Path,
    pub config: &'a Path,
    pub credentials: &'a Path,
}

/// The unit for `paths`, loading `credentials` and allowing `stop_timeout_secs` to stop:
/// the template with its paths replaced, its block of `LoadCredential…=` lines replaced
/// by `credentials`' lines, and its `TimeoutStopSec=` set.
fn render(user: bool, paths: &Paths, credentials: &[String], stop_timeout_secs: u64) -> String {
    render_kind(&kind(user), paths, credentials, stop_timeout_secs)
}

fn render_kind(
    kind: &Kind,
    paths: &Paths,
    credentials: &[String],
    stop_timeout_secs: u64,
) -> String {
    let mut out = String::with_capacity(kind.template.len());
    let mut in_block = false;
    for line in kind.template.lines() {
        if line.starts_with("LoadCredential") {
            if !in_block {
                for credential in credentials {
                    out.push_str(credential);
                    out.push('\n');
                }
                in_block = true;
            }
            continue;
        }
        in_block = false;
        if line.starts_with("TimeoutStopSec=") {
            out.push_str(&format!("TimeoutStopSec={stop_timeout_secs}\n"));
            continue;
        }
        out.push_str(
            &line
                .replace(kind.binary, &paths.binary.display().to_string())
                .replace(kind.config, &paths.config.display().to_string())
                .replace(kind.credentials, &paths.credentials.display().to_string()),
        );
        out.push('\n');
    }
    out
}

fn home_config() -> Result<PathBuf, String> {
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".config"))
            .ok_or_else(|| "neither XDG_CONFIG_HOME nor HOME is set".to_string()),
    }
}

/// Where credentials are kept: `/etc/hermes/credentials`, or
/// `~/.config/hermes/credentials` for a user unit.
fn credentials_dir(user: bool) -> Result<PathBuf, String> {
    if user {
        Ok(home_config()?.join("hermes/credentials"))
    } else {
        Ok(PathBuf::from(SYSTEM_CREDENTIALS))
    }
}

/// Every directory an install may have stored this machine's credentials in, whichever
/// kind of unit runs now: the system one, and the user one as `$XDG_CONFIG_HOME` and as
/// `$HOME/.config` (a user manager sets `HOME` but need not set `XDG_CONFIG_HOME` as the
/// installing shell had it). The gateway hides them all from tools: `$CREDENTIALS_DIRECTORY`
/// holds systemd's copies, but a user install's originals are plaintext files that the
/// state directory covers only by chance (`~/.config/hermes` under systemd 252, not
/// `~/.local/state/hermes` under later ones). One that does not exist is hidden still, so
/// an install made while the gateway runs is covered too.
pub fn stored_credentials_dirs() -> Vec<PathBuf> {
    stored_credentials_dirs_in(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn stored_credentials_dirs_in(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let user = [
        var("XDG_CONFIG_HOME").map(PathBuf::from),
        var("HOME").map(|home| PathBuf::from(home).join(".config")),
    ];
    std::iter::once(PathBuf::from(SYSTEM_CREDENTIALS))
        .chain(
            user.into_iter()
                .flatten()
                .map(|config| config.join("hermes/credentials")),
        )
        .collect()
}

pub fn unit_path(user: bool) -> Result<PathBuf, String> {
    Ok(units_dir(user)?.join(UNIT_NAME))
}

fn units_dir(user: bool) -> Result<PathBuf, String> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    Ok(home_config()?.join("systemd/user"))
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

fn try_install(user: bool, config_path: &Path, dry_run: bool) -> Result<(), Stopped> {
    let template = units_dir(user).map_err(failed)?.join(TEMPLATE_NAME);
    if !dry_run && template.exists() {
        return Err(failed(format!(
            "cannot install the single unit: {} is installed, and a host runs either one bot (the single unit) or several (instances of the template), never both, as the single unit's state directory would hold the instances'. Install this bot as an instance: hermes-gateway service install{} --instance NAME",
            template.display(),
            if user { " --user" } else { "" }
        )));
    }
    let config_path = std::fs::canonicalize(config_path).map_err(|e| Stopped {
        message: format!("configuration file {}: {e}", config_path.display()),
        code: EXIT_CONFIG,
    })?;
    let config = Config::load(&config_path).map_err(|e| Stopped {
        message: e.to_string(),
        code: EXIT_CONFIG,
    })?;
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| failed(format!("cannot locate this binary: {e}")))?;
    let dir = credentials_dir(user).map_err(failed)?;
    let reinstall = format!(
        "hermes-gateway service install{} --config {}",
        if user { " --user" } else { "" },
        config_path.display()
    );
    let mut credentials = plan_credentials(&config, &dir, user, &reinstall).map_err(|missing| {
        refused(
            format!(
                "cannot install: the unit would start without {} secret(s) the configuration names",
                missing.len()
            ),
            &missing,
        )
    })?;
    let path = unit_path(user).map_err(failed)?;
    let paths = Paths {
        binary: &binary,
        config: &config_path,
        credentials: &dir,
    };
    let stop = stop_timeout_secs(&config.workers);
    if dry_run {
        show_credentials_plan(&credentials, &dir);
        eprintln!("# would write {}", path.display());
        print!("{}", render(user, &paths, &lines(&credentials, &dir), stop));
        return Ok(());
    }
    credentials::store(&mut credentials, &dir).map_err(failed)?;
    let unit = render(user, &paths, &lines(&credentials, &dir), stop);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(&path, unit)
        .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    systemctl(user, &["daemon-reload"]).map_err(failed)?;
    let scope = if user { "--user " } else { "" };
    println!("next: systemctl {scope}enable --now hermes-gateway");
    println!(
        "then: systemctl {scope}status hermes-gateway   (or: hermes-gateway status{})",
        if user { " --user" } else { "" }
    );
    Ok(())
}

fn lines(credentials: &[Credential], dir: &Path) -> Vec<String> {
    credentials.iter().map(|c| c.unit_line(dir)).collect()
}

/// How each secret `config` names reaches the unit, from the installing shell's variables
/// and the credentials already in `dir`; the names of those found nowhere otherwise.
fn plan_credentials(
    config: &Config,
    dir: &Path,
    user: bool,
    reinstall: &str,
) -> Result<Vec<Credential>, Vec<String>> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let exists = |path: &Path| path.is_file();
    let host = Host {
        dir,
        var: &var,
        exists: &exists,
        // A user manager cannot decrypt host-key credentials (systemd 252 has no
        // `systemd-creds --user`), so user units get 0600 files.
        encrypt: !user && on_path("systemd-creds"),
        reinstall,
    };
    credentials::plan(&credentials::needed(config), &host)
}

/// An install refused for the secrets `missing`, before anything was written.
fn refused(what: String, missing: &[String]) -> Stopped {
    Stopped {
        message: format!("{what} (nothing was written):\n  {}", missing.join("\n  ")),
        code: EXIT_CONFIG,
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
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
    remove_unit_file(&path, "")?;
    systemctl(user, &["daemon-reload"]).map_err(failed)
}

/// What a dry run would do with each credential, on stderr (stdout carries the units).
fn show_credentials_plan(credentials: &[Credential], dir: &Path) {
    for c in credentials {
        let what = if c.store.is_some() {
            "would store"
        } else {
            "keeps"
        };
        eprintln!("# {what} credential {}: {}", c.name, c.path(dir).display());
    }
}

/// Removes the unit file at `path` and says so, `note` after its name.
fn remove_unit_file(path: &Path, note: &str) -> Result<(), Stopped> {
    std::fs::remove_file(path)
        .map_err(|e| failed(format!("cannot remove {}: {e}", path.display())))?;
    println!("removed {}{note}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use limits::watchdog_floor_secs;

    #[test]
    fn rendering_replaces_the_paths_the_credentials_and_the_stop_timeout() {
        let paths = Paths {
            binary: Path::new("/opt/h/hermes-gateway"),
            config: Path::new("/srv/h.toml"),
            credentials: Path::new("/srv/creds"),
        };
        let creds = vec!["LoadCredential=T:/srv/creds/T".to_string()];
        let unit = render(false, &paths, &creds, 99);
        assert!(unit.contains("ExecStart=/opt/h/hermes-gateway run --config /srv/h.toml"));
        assert!(unit.contains("\nTimeoutStopSec=99\n"), "{unit}");
        assert!(
            unit.contains("\nLoadCredential=T:/srv/creds/T\n# "),
            "{unit}"
        );
        let loads = unit.lines().filter(|l| l.starts_with("LoadCredential"));
        assert_eq!(loads.count(), 1, "{unit}");
        // Everything else is the template's.
        let rest = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with("LoadCredential") && !l.starts_with("TimeoutStopSec="))
                .map(|l| {
                    l.replace("/opt/h/hermes-gateway", SYSTEM_BINARY)
                        .replace("/srv/h.toml", SYSTEM_CONFIG)
                        .replace("/srv/creds", SYSTEM_CREDENTIALS)
                })
                .collect()
        };
        assert_eq!(rest(&unit), rest(SYSTEM_UNIT));
        let user = render(true, &paths, &creds, 17);
        assert!(user.contains("ExecStart=/opt/h/hermes-gateway run --config /srv/h.toml"));
        assert!(user.contains("WantedBy=default.target"));
        assert!(user.contains("\nLoadCredential=T:/srv/creds/T\n"), "{user}");
    }

    #[test]
    fn every_place_an_install_keeps_credentials_is_known_in_any_mode() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let dirs = stored_credentials_dirs_in(env(&[
            ("HOME", "/home/ann"),
            ("XDG_CONFIG_HOME", "/home/ann/cfg"),
        ]));
        assert_eq!(
            dirs,
            [
                PathBuf::from(SYSTEM_CREDENTIALS),
                PathBuf::from("/home/ann/cfg/hermes/credentials"),
                PathBuf::from("/home/ann/.config/hermes/credentials"),
            ]
        );
        // Under a user manager that does not set XDG_CONFIG_HOME, the unit's `%h` path.
        let dirs = stored_credentials_dirs_in(env(&[("HOME", "/home/ann")]));
        let unit = USER_CREDENTIALS.replace("%h", "/home/ann");
        assert!(dirs.contains(&PathBuf::from(unit)), "{dirs:?}");
    }

    #[test]
    fn the_templates_stop_timeout_is_the_default_configurations() {
        let config = Config::parse(
            "[[providers]]\nname='a'\nbase_url='http://x'\nmodel='m'\n",
            Path::new("h.toml"),
            Path::new("."),
        )
        .unwrap();
        let expected = format!("TimeoutStopSec={}", stop_timeout_secs(&config.workers));
        for unit in [SYSTEM_UNIT, USER_UNIT] {
            assert!(unit.lines().any(|l| l == expected), "{expected}");
            let watchdog = seconds_of(unit, "WatchdogSec").unwrap();
            assert!(
                watchdog > watchdog_floor_secs(&config),
                "WatchdogSec={watchdog}"
            );
        }
        assert_eq!(
            seconds_of("A=1\nTimeoutStopSec=30s\n", "TimeoutStopSec"),
            Some(30)
        );
        assert_eq!(seconds_of("TimeoutStopSec=2min", "TimeoutStopSec"), None);
    }

    #[test]
    fn every_directive_has_a_reason_above_it() {
        use super::instance::{SYSTEM_TEMPLATE, USER_TEMPLATE};
        for unit in [SYSTEM_UNIT, USER_UNIT, SYSTEM_TEMPLATE, USER_TEMPLATE] {
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
