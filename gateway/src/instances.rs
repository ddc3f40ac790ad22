//! Several bots on one host: one gateway per bot, each a systemd template instance
//! (`hermes-gateway@NAME`), sharing nothing with the others. Telegram lets one poller at a
//! time take a bot's updates and caps each bot's sending, so the bot is the unit of scale
//! (docs/SCALING.md); this module is what the commands need to know of instances: which
//! names are valid, where an instance's configuration, credentials and state are, which
//! instances this host has (for `status` with no arguments), and every directory any
//! instance may keep, which the tool sandbox hides from every tool, so that a tool of one
//! bot cannot read another bot's state or secrets even where all of them run as one user
//! (the `--user` template).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The longest instance name: the template's `User=hermes-%i` must stay a valid user name
/// (31 characters at most).
const MAX_NAME: usize = 24;

/// The single unit's configuration is `/etc/hermes/hermes.toml`: an instance of that name
/// would be it.
const RESERVED: &str = "hermes";

/// The variable the template unit sets to the instance's name (`Environment=`).
pub const ENV: &str = "HERMES_INSTANCE";

/// Whether `name` can name an instance: it becomes a file name, a directory name, a
/// unit's instance and part of a user name, so ASCII letters, digits, `-` and `_`, first a
/// letter or digit, at most 24, and not `hermes`.
pub fn check_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !first_ok || !rest_ok || name.len() > MAX_NAME {
        return Err(format!(
            "{name:?} cannot name an instance: use ASCII letters, digits, '-' and '_', starting with a letter or digit, at most {MAX_NAME} characters"
        ));
    }
    if name == RESERVED {
        return Err(format!(
            "{name:?} cannot name an instance: /etc/hermes/{RESERVED}.toml is the single unit's configuration"
        ));
    }
    Ok(())
}

/// This process's instance name, when the template unit started it.
pub fn from_env() -> Option<String> {
    std::env::var(ENV)
        .ok()
        .filter(|name| check_name(name).is_ok())
}

/// `hermes-gateway@NAME.service`.
pub fn unit_name(name: &str) -> String {
    format!("hermes-gateway@{name}.service")
}

fn var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `$XDG_CONFIG_HOME/hermes`, else `~/.config/hermes`: a user's configuration directory.
fn user_config_dir(var: &impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("hermes"))
}

/// Where the configurations of instances are: `/etc/hermes`, or the user's
/// `~/.config/hermes`.
pub fn config_dir(user: bool) -> PathBuf {
    if user {
        user_config_dir(&var).unwrap_or_else(|| PathBuf::from(".config/hermes"))
    } else {
        PathBuf::from("/etc/hermes")
    }
}

/// The configuration the template unit runs instance `name` with.
pub fn config_path(user: bool, name: &str) -> PathBuf {
    config_dir(user).join(format!("{name}.toml"))
}

/// Where an instance's credentials are stored: a directory of its own under the single
/// unit's, so two bots' secrets of the same name never meet.
pub fn credentials_dir(single: &Path, name: &str) -> PathBuf {
    single.join(name)
}

/// Where the template unit keeps instance `name`'s state when its configuration sets no
/// `state.dir`, in the order `status` looks: `/var/lib/hermes/NAME`; for a user unit
/// `~/.config/hermes/NAME` (systemd 252) then `~/.local/state/hermes/NAME`.
pub fn state_candidates(
    user: bool,
    name: &str,
    var: impl Fn(&str) -> Option<OsString>,
) -> Vec<PathBuf> {
    if !user {
        return vec![Path::new(crate::service::SYSTEM_STATE).join(name)];
    }
    let state = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("hermes"));
    [user_config_dir(&var), state]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .collect()
}

/// The instances this host has: one per `NAME.toml` in the configuration directory (what
/// `service install --instance NAME` runs), sorted; the single unit's `hermes.toml` is not
/// one.
pub fn discover(user: bool) -> Vec<String> {
    discover_in(&config_dir(user))
}

fn discover_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".toml")?.to_string();
            check_name(&name).is_ok().then_some(name)
        })
        .collect();
    names.sort();
    names
}

/// Every directory any gateway on this host may keep its configuration, secrets, state or
/// sockets in, whichever unit (single or instance, system or user) runs it: the tool
/// sandbox hides them all from every tool. Its own instance's are hidden anyway; the
/// others' matter where every instance runs as one user (the `--user` template), and hide
/// what the system template's per-instance users already keep apart.
pub fn every_instance_dir() -> Vec<PathBuf> {
    every_instance_dir_in(var, nix::unistd::getuid().as_raw())
}

fn every_instance_dir_in(var: impl Fn(&str) -> Option<OsString>, uid: u32) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [
        "/etc/hermes",
        "/var/lib/hermes",
        "/var/lib/private/hermes",
        "/run/hermes",
        // Every unit's credentials, other instances' among them (systemd's copies).
        "/run/credentials",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let runtime = [
        var("XDG_RUNTIME_DIR").map(PathBuf::from),
        Some(PathBuf::from(format!("/run/user/{uid}"))),
    ];
    for dir in runtime.into_iter().flatten() {
        dirs.push(dir.join("hermes"));
        dirs.push(dir.join("credentials"));
    }
    let home = var("HOME").map(PathBuf::from);
    dirs.extend(user_config_dir(&var));
    dirs.extend(home.as_ref().map(|h| h.join(".config/hermes")));
    dirs.extend(var("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("hermes")));
    dirs.extend(home.as_ref().map(|h| h.join(".local/state/hermes")));
    dirs.sort();
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(
        vars: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<OsString> + Copy {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn an_instance_name_is_a_file_a_unit_and_a_user_name() {
        for good in [
            "family",
            "work-bot",
            "a",
            "Persona_2",
            "x23456789012345678901234",
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "a/b",
            "..",
            "a.b",
            "a b",
            "hermes",
            "x234567890123456789012345",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_finds_the_instances_by_their_configurations() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "work.toml",
            "family.toml",
            "hermes.toml",
            "notes.txt",
            "bad name.toml",
        ] {
            std::fs::write(dir.path().join(file), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("credentials")).unwrap();
        assert_eq!(discover_in(dir.path()), ["family", "work"]);
        assert!(discover_in(&dir.path().join("none")).is_empty());
    }

    #[test]
    fn an_instances_state_is_under_the_units_state_directory() {
        assert_eq!(
            state_candidates(false, "work", env(&[])),
            [PathBuf::from("/var/lib/hermes/work")]
        );
        assert_eq!(
            state_candidates(true, "work", env(&[("HOME", "/home/ann")])),
            [
                PathBuf::from("/home/ann/.config/hermes/work"),
                PathBuf::from("/home/ann/.local/state/hermes/work")
            ]
        );
    }

    #[test]
    fn every_instances_directories_are_hidden_not_only_ones_own() {
        let dirs = every_instance_dir_in(
            env(&[("HOME", "/home/ann"), ("XDG_RUNTIME_DIR", "/run/user/1000")]),
            1000,
        );
        for hidden in [
            "/etc/hermes",
            "/var/lib/hermes",
            "/var/lib/private/hermes",
            "/run/hermes",
            "/run/credentials",
            "/run/user/1000/hermes",
            "/run/user/1000/credentials",
            "/home/ann/.config/hermes",
            "/home/ann/.local/state/hermes",
        ] {
            assert!(dirs.contains(&PathBuf::from(hidden)), "{hidden}: {dirs:?}");
        }
        // An instance's own credentials are under the stored ones `service install` keeps.
        let system = Path::new(crate::service::SYSTEM_CREDENTIALS);
        assert!(credentials_dir(system, "work").starts_with("/etc/hermes"));
    }
}
