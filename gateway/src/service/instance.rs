//! `service install|uninstall --instance NAME`: one bot of several on the host, run by the
//! template unit (`hermes-gateway@.service`) with the configuration `/etc/hermes/NAME.toml`,
//! and a drop-in of its own for what it does not share with the other bots: its stop time
//! and its secrets, stored in its own credentials directory.

use std::path::{Path, PathBuf};

use hermes_config::{Config, EXIT_CONFIG};

use super::credentials;
use super::{
    Kind, Paths, STOP_MARGIN_SECS, Stopped, credentials_dir, exit_status, failed, kind, lines,
    plan_credentials, refused, remove_unit_file, render_kind, seconds_of, show_credentials_plan,
    stop_timeout_secs, systemctl, unit_path, units_dir,
};

/// The template units of several bots on one host ([`install_instance`]): the single unit but for the lines that make it an
/// instance.
pub(super) const SYSTEM_TEMPLATE: &str = include_str!("../../../deploy/hermes-gateway@.service");
pub(super) const USER_TEMPLATE: &str = include_str!("../../../deploy/hermes-gateway-user@.service");
pub(super) const TEMPLATE_NAME: &str = "hermes-gateway@.service";
/// The file of an instance's own lines, in its drop-in directory.
const DROP_IN: &str = "instance.conf";

/// What differs between the system and the user template: the single unit's paths, which
/// the template names the same way.
fn template_kind(user: bool) -> Kind {
    Kind {
        template: if user { USER_TEMPLATE } else { SYSTEM_TEMPLATE },
        ..kind(user)
    }
}

/// The instance's drop-in: its stop time and its credentials, the lines that differ
/// between bots (each bot's configuration names its own secrets).
fn render_drop_in(name: &str, credentials: &[String], stop_timeout_secs: u64) -> String {
    let mut out = format!(
        "# Written by `hermes-gateway service install --instance {name}`: what instance {name}\n\
         # does not share with the other bots. TimeoutStopSec: its configuration's\n\
         # shutdown_drain_secs + kill_grace_secs + {STOP_MARGIN_SECS}. The credentials: one line per secret its\n\
         # configuration names, stored in its own credentials directory.\n\
         [Service]\nTimeoutStopSec={stop_timeout_secs}\n"
    );
    for line in credentials {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn drop_in_dir(user: bool, name: &str) -> Result<PathBuf, String> {
    Ok(units_dir(user)?.join(format!("{}.d", crate::instances::unit_name(name))))
}

/// `service install --instance NAME`: the template unit, and instance `NAME`'s drop-in
/// with the secrets of its configuration (`/etc/hermes/NAME.toml`, which the template
/// runs it with), stored in its own credentials directory.
pub fn install_instance(user: bool, name: &str, config: Option<&Path>, dry_run: bool) -> i32 {
    exit_status(try_install_instance(user, name, config, dry_run))
}

fn try_install_instance(
    user: bool,
    name: &str,
    config: Option<&Path>,
    dry_run: bool,
) -> Result<(), Stopped> {
    let config_error = |message: String| Stopped {
        message,
        code: EXIT_CONFIG,
    };
    crate::instances::check_name(name).map_err(config_error)?;
    let expected = crate::instances::config_path(user, name);
    let given = config.unwrap_or(&expected);
    let config_path = std::fs::canonicalize(given)
        .map_err(|e| config_error(format!("configuration file {}: {e}", given.display())))?;
    if std::fs::canonicalize(&expected).ok().as_ref() != Some(&config_path) {
        return Err(config_error(format!(
            "the template unit runs instance {name} with {}: put its configuration there (cp {} {}), then install again",
            expected.display(),
            config_path.display(),
            expected.display()
        )));
    }
    let single = unit_path(user).map_err(failed)?;
    if !dry_run && single.exists() {
        return Err(failed(format!(
            "cannot install instance {name}: the single unit {} is installed, and a host runs either one bot (the single unit) or several (instances), never both, as the single unit's state directory would hold the instances'. Move that bot to an instance first (docs/OPERATING.md: Several bots on one host)",
            single.display()
        )));
    }
    let config = Config::load(&config_path).map_err(|e| config_error(e.to_string()))?;
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| failed(format!("cannot locate this binary: {e}")))?;
    let dir = crate::instances::credentials_dir(&credentials_dir(user).map_err(failed)?, name);
    let scope = if user { " --user" } else { "" };
    let reinstall = format!("hermes-gateway service install{scope} --instance {name}");
    let mut credentials = plan_credentials(&config, &dir, user, &reinstall).map_err(|missing| {
        refused(format!(
            "cannot install instance {name}: it would start without {} secret(s) its configuration names",
            missing.len()
        ), &missing)
    })?;
    let stop = stop_timeout_secs(&config.workers);
    let kind = template_kind(user);
    let paths = Paths {
        binary: &binary,
        config: Path::new(kind.config),
        credentials: Path::new(kind.credentials),
    };
    // The template keeps its own (the defaults'); the drop-in sets this instance's.
    let default_stop = seconds_of(kind.template, "TimeoutStopSec").unwrap_or(stop);
    let template = render_kind(&kind, &paths, &[], default_stop);
    let template_path = units_dir(user).map_err(failed)?.join(TEMPLATE_NAME);
    let drop_in_path = drop_in_dir(user, name).map_err(failed)?.join(DROP_IN);
    if dry_run {
        show_credentials_plan(&credentials, &dir);
        eprintln!("# would write {}", template_path.display());
        print!("{template}");
        eprintln!("# would write {}", drop_in_path.display());
        print!("{}", render_drop_in(name, &lines(&credentials, &dir), stop));
        return Ok(());
    }
    credentials::store(&mut credentials, &dir).map_err(failed)?;
    let drop_in = render_drop_in(name, &lines(&credentials, &dir), stop);
    for (path, text) in [(&template_path, &template), (&drop_in_path, &drop_in)] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| failed(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(path, text)
            .map_err(|e| failed(format!("cannot write {}: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    systemctl(user, &["daemon-reload"]).map_err(failed)?;
    println!("next: systemctl{scope} enable --now hermes-gateway@{name}");
    println!(
        "then: hermes-gateway status{scope} {name}   (every bot: hermes-gateway status{scope})"
    );
    Ok(())
}

/// `service uninstall --instance NAME`: stops and disables the instance and removes its
/// drop-in; the template goes with the last instance. Its credentials and state stay.
pub fn uninstall_instance(user: bool, name: &str, dry_run: bool) -> i32 {
    exit_status(try_uninstall_instance(user, name, dry_run))
}

fn try_uninstall_instance(user: bool, name: &str, dry_run: bool) -> Result<(), Stopped> {
    crate::instances::check_name(name).map_err(|message| Stopped {
        message,
        code: EXIT_CONFIG,
    })?;
    let unit = crate::instances::unit_name(name);
    let drop_in = drop_in_dir(user, name).map_err(failed)?;
    let units = units_dir(user).map_err(failed)?;
    if dry_run {
        println!(
            "would stop and disable {unit}, then remove {} (and the template with the last instance)",
            drop_in.display()
        );
        return Ok(());
    }
    if !drop_in.exists() {
        println!("{unit} is not installed");
        return Ok(());
    }
    if let Err(e) = systemctl(user, &["disable", "--now", &unit]) {
        eprintln!("{e} (removing the instance anyway)");
    }
    std::fs::remove_dir_all(&drop_in)
        .map_err(|e| failed(format!("cannot remove {}: {e}", drop_in.display())))?;
    println!("removed {}", drop_in.display());
    let others = std::fs::read_dir(&units)
        .map(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                let file = e.file_name();
                let file = file.to_string_lossy();
                file.starts_with("hermes-gateway@") && file.ends_with(".service.d")
            })
        })
        .unwrap_or(false);
    if !others {
        let template = units.join(TEMPLATE_NAME);
        if template.exists() {
            remove_unit_file(&template, " (no instance left)")?;
        }
    }
    systemctl(user, &["daemon-reload"]).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{SYSTEM_UNIT, USER_UNIT};

    /// The template is the single unit but for the lines that make it an instance: a test
    /// keeps the two in step, so a directive added to one cannot be missing from the other.
    #[test]
    fn the_template_is_the_single_unit_but_for_the_instances_own_lines() {
        let instance_line = |l: &str| {
            l.starts_with('#')
                || l.contains("%i")
                || l.starts_with("LoadCredential")
                || l.trim().is_empty()
        };
        for (single, template) in [(SYSTEM_UNIT, SYSTEM_TEMPLATE), (USER_UNIT, USER_TEMPLATE)] {
            // The keys the template gives the instance's own values.
            let own: Vec<&str> = template
                .lines()
                .filter(|l| l.contains("%i") && !l.starts_with('#'))
                .filter_map(|l| l.split_once('=').map(|(k, _)| k))
                .collect();
            let rest = |unit: &str| -> Vec<String> {
                unit.lines()
                    .filter(|l| !instance_line(l))
                    .filter(|l| l.split_once('=').is_none_or(|(k, _)| !own.contains(&k)))
                    .map(String::from)
                    .collect()
            };
            assert_eq!(rest(single), rest(template));
            for own in [
                "StateDirectory=hermes/%i",
                "RuntimeDirectory=hermes/%i",
                "SyslogIdentifier=hermes-gateway-%i",
                "LogExtraFields=HERMES_INSTANCE=%i",
                "Environment=HERMES_INSTANCE=%i",
            ] {
                assert!(template.lines().any(|l| l == own), "{own}");
            }
            assert!(
                template
                    .lines()
                    .any(|l| l.starts_with("ExecStart=") && l.ends_with("hermes/%i.toml"))
            );
            assert!(!template.lines().any(|l| l.starts_with("LoadCredential")));
        }
        assert!(SYSTEM_TEMPLATE.lines().any(|l| l == "User=hermes-%i"));
    }

    #[test]
    fn an_instance_gets_the_template_with_this_binary_and_a_drop_in_of_its_own() {
        let kind = template_kind(false);
        let paths = Paths {
            binary: Path::new("/opt/h/hermes-gateway"),
            config: Path::new(kind.config),
            credentials: Path::new(kind.credentials),
        };
        let unit = render_kind(&kind, &paths, &[], 17);
        assert!(
            unit.contains("\nExecStart=/opt/h/hermes-gateway run --config /etc/hermes/%i.toml\n"),
            "{unit}"
        );
        let drop_in = render_drop_in(
            "work",
            &["LoadCredentialEncrypted=T:/etc/hermes/credentials/work/T.cred".to_string()],
            42,
        );
        assert!(drop_in.contains("\n[Service]\nTimeoutStopSec=42\nLoadCredentialEncrypted=T:/etc/hermes/credentials/work/T.cred\n"), "{drop_in}");
    }
}
