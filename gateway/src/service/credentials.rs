//! The secrets a configuration names, delivered to the unit as systemd credentials.
//!
//! An operator checks a configuration with the secrets exported in their shell, then runs
//! `service install`; the service must then find the same secrets, without the operator
//! making files by hand and without any secret in the unit file (which every local user
//! can read) or in the service's environment (which every process it starts inherits).
//! So each secret the configuration names becomes a credential named like it: a `*_env`
//! variable set in the installing shell is stored under the credentials directory,
//! encrypted with `systemd-creds` where the host can (`LoadCredentialEncrypted=`) or as a
//! root-only 0600 file (`LoadCredential=`); the service reads it back through
//! `hermes_config::read_variable`, which falls back to `$CREDENTIALS_DIRECTORY/<VARIABLE>`
//! when the variable is unset. A relative `*_file` names a credential the operator put in
//! that directory. Installing again with a variable unset keeps what was stored; a secret
//! that the unit could not deliver stops the install before anything is written.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hermes_config::{Config, SecretFrom, SecretSource, valid_credential_name};
use hermes_protocol::Secret;

/// One secret the configuration names, and the key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// The credential's name: the variable's, or the relative file name.
    pub name: String,
    pub from: Origin,
    /// `telegram.token_env`, `providers[0].api_key_env`, `tools.mcp[1].env`.
    pub key: String,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `*_env` key (or a tool's `env` entry): a variable of the installing shell.
    Variable,
    /// A relative `*_file`: a file the operator puts in the credentials directory.
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `LoadCredentialEncrypted=`, from `systemd-creds encrypt` (`NAME.cred`).
    Encrypted,
    /// `LoadCredential=`, from a 0600 file (`NAME`).
    Plain,
}

/// A credential the unit will load, and the value to store first, if there is a new one.
#[derive(Debug)]
pub struct Credential {
    pub name: String,
    pub delivery: Delivery,
    pub store: Option<Secret>,
}

impl Credential {
    pub fn path(&self, dir: &Path) -> PathBuf {
        file_for(dir, &self.name, self.delivery)
    }

    /// The unit's line for it.
    pub fn unit_line(&self, dir: &Path) -> String {
        let directive = match self.delivery {
            Delivery::Encrypted => "LoadCredentialEncrypted",
            Delivery::Plain => "LoadCredential",
        };
        format!("{directive}={}:{}", self.name, self.path(dir).display())
    }
}

fn file_for(dir: &Path, name: &str, delivery: Delivery) -> PathBuf {
    match delivery {
        Delivery::Encrypted => dir.join(format!("{name}.cred")),
        Delivery::Plain => dir.join(name),
    }
}

/// Every secret `config` names, once per name, in the order of the file. An absolute
/// `*_file` is not one: the service reads it from its path.
pub fn needed(config: &Config) -> Vec<Needed> {
    let mut found: Vec<Needed> = Vec::new();
    let mut add = |needed: Needed| {
        if !found.iter().any(|n| n.name == needed.name) {
            found.push(needed);
        }
    };
    let mut from_source = |source: &SecretSource| match &source.from {
        SecretFrom::Env(name) => Some(Needed {
            name: name.clone(),
            from: Origin::Variable,
            key: source.key.clone(),
            line: source.line,
        }),
        SecretFrom::File { path, .. } if path.is_relative() => Some(Needed {
            name: path.display().to_string(),
            from: Origin::File,
            key: source.key.clone(),
            line: source.line,
        }),
        SecretFrom::File { .. } => None,
    };
    let mut sources = vec![from_source(&config.telegram.token)];
    for provider in &config.providers {
        sources.push(provider.api_key.as_ref().and_then(&mut from_source));
    }
    for needed in sources.into_iter().flatten() {
        add(needed);
    }
    for tool in &config.tools.mcp {
        for name in &tool.env {
            add(Needed {
                name: name.clone(),
                from: Origin::Variable,
                key: format!("{}.env", tool.key),
                line: tool.line,
            });
        }
    }
    found
}

/// What the install can see of this machine, for [`plan`].
pub struct Host<'a> {
    /// Where credentials are kept (`/etc/hermes/credentials`).
    pub dir: &'a Path,
    /// The installing shell's variable, if set and not blank.
    pub var: &'a dyn Fn(&str) -> Option<String>,
    pub exists: &'a dyn Fn(&Path) -> bool,
    /// `systemd-creds encrypt` is worth trying (a system unit on a host that has it).
    pub encrypt: bool,
    /// The command that installs again, for the fixes the report gives.
    pub reinstall: &'a str,
}

/// How each secret reaches the unit: a value from the shell to store (encrypted when the
/// host can), else what the directory already holds (kept as it is). Every secret the unit
/// could not deliver is one line of the error, with the command that fixes it.
pub fn plan(needed: &[Needed], host: &Host) -> Result<Vec<Credential>, Vec<String>> {
    let mut credentials = Vec::new();
    let mut missing = Vec::new();
    for n in needed {
        let at = match n.line {
            Some(line) => format!("line {line}: {}", n.key),
            None => n.key.clone(),
        };
        if !valid_credential_name(&n.name) {
            missing.push(format!(
                "{at}: {:?} cannot be a credential's name (it has a '/'); name a file directly in {}, or give an absolute path",
                n.name,
                host.dir.display()
            ));
            continue;
        }
        let stored = [Delivery::Encrypted, Delivery::Plain]
            .into_iter()
            .find(|d| (host.exists)(&file_for(host.dir, &n.name, *d)));
        let fresh = match n.from {
            Origin::Variable => (host.var)(&n.name),
            Origin::File => None,
        };
        match (fresh, stored) {
            (Some(value), _) => credentials.push(Credential {
                name: n.name.clone(),
                delivery: if host.encrypt {
                    Delivery::Encrypted
                } else {
                    Delivery::Plain
                },
                store: Some(Secret::new(value)),
            }),
            (None, Some(delivery)) => credentials.push(Credential {
                name: n.name.clone(),
                delivery,
                store: None,
            }),
            (None, None) => missing.push(match n.from {
                Origin::Variable => format!(
                    "{at}: {name} is not set in this shell, and {dir} holds no credential {name}; the service would start without it. Fix:\n      read -rs {name} && export {name} && {reinstall}",
                    name = n.name,
                    dir = host.dir.display(),
                    reinstall = host.reinstall,
                ),
                Origin::File => format!(
                    "{at}: {dir} holds no credential {name}; the service would start without it. Fix:\n      install -D -m 0600 /path/to/the/secret {path} && {reinstall}",
                    name = n.name,
                    dir = host.dir.display(),
                    path = host.dir.join(&n.name).display(),
                    reinstall = host.reinstall,
                ),
            }),
        }
    }
    if missing.is_empty() {
        Ok(credentials)
    } else {
        Err(missing)
    }
}

/// Stores the new values of `credentials` in `dir` (0700), each encrypted where planned
/// and possible: when `systemd-creds encrypt` fails, that credential and the rest are
/// stored as 0600 files instead, and the reason is printed. A stored value replaces the
/// other form of the same credential, so a later install that keeps it finds only one.
pub fn store(credentials: &mut [Credential], dir: &Path) -> Result<(), String> {
    if credentials.iter().all(|c| c.store.is_none()) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
    let mut encrypt = true;
    for credential in credentials.iter_mut() {
        let Some(value) = credential.store.take() else {
            continue;
        };
        if credential.delivery == Delivery::Encrypted && encrypt {
            match encrypt_into(&credential.name, &value, &credential.path(dir)) {
                Ok(()) => {
                    remove_other(dir, &credential.name, Delivery::Plain)?;
                    println!(
                        "stored {} encrypted: {}",
                        credential.name,
                        credential.path(dir).display()
                    );
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "systemd-creds cannot encrypt here ({e}); storing credentials as root-only files instead"
                    );
                    encrypt = false;
                }
            }
        }
        credential.delivery = Delivery::Plain;
        write_private(&credential.path(dir), &value)?;
        remove_other(dir, &credential.name, Delivery::Encrypted)?;
        println!(
            "stored {}: {} (mode 0600)",
            credential.name,
            credential.path(dir).display()
        );
    }
    Ok(())
}

fn encrypt_into(name: &str, value: &Secret, path: &Path) -> Result<(), String> {
    let mut child = Command::new("systemd-creds")
        .args(["encrypt", &format!("--name={name}"), "-"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run systemd-creds: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(value.expose().as_bytes())
            .map_err(|e| format!("cannot write to systemd-creds: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("systemd-creds: {e}"))?;
    if output.status.success() {
        // Encrypted, but only root needs to read it (systemd-creds leaves it 0644).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))
    } else {
        let _ = std::fs::remove_file(path);
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn write_private(path: &Path, value: &Secret) -> Result<(), String> {
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            // An existing file keeps its mode on open; make sure it is private.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(value.expose().as_bytes())
        });
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn remove_other(dir: &Path, name: &str, delivery: Delivery) -> Result<(), String> {
    let path = file_for(dir, name, delivery);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove the old {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(
            text,
            Path::new("/etc/hermes/hermes.toml"),
            Path::new("/etc/hermes"),
        )
        .unwrap_or_else(|p| panic!("{p:#?}"))
    }

    const README: &str = r#"
[telegram]
token_env = "TELEGRAM_BOT_TOKEN"
allowed_users = [123456789]

[[providers]]
name = "main"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"

[[providers]]
name = "same-account"
base_url = "https://api.openai.com/v1"
model = "gpt-4o"
api_key_env = "OPENAI_API_KEY"

[[providers]]
name = "local"
base_url = "http://127.0.0.1:11434/v1"
model = "llama3.1"
api_key_file = "/root/local-key"

[[tools.mcp]]
name = "search"
command = "search-server"
env = ["SEARCH_KEY"]
"#;

    fn plan_with(
        needed: &[Needed],
        vars: &[(&str, &str)],
        files: &[&str],
        encrypt: bool,
    ) -> Result<Vec<(String, Delivery, bool)>, Vec<String>> {
        let dir = Path::new("/etc/hermes/credentials");
        let var = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        };
        let exists = |path: &Path| files.iter().any(|f| dir.join(f) == path);
        let host = Host {
            dir,
            var: &var,
            exists: &exists,
            encrypt,
            reinstall: "hermes-gateway service install --config /etc/hermes/hermes.toml",
        };
        plan(needed, &host).map(|creds| {
            creds
                .into_iter()
                .map(|c| (c.name.clone(), c.delivery, c.store.is_some()))
                .collect()
        })
    }

    #[test]
    fn every_secret_the_configuration_names_is_needed_once() {
        let needed = needed(&config(README));
        let names: Vec<(&str, &str)> = needed
            .iter()
            .map(|n| (n.name.as_str(), n.key.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("TELEGRAM_BOT_TOKEN", "telegram.token_env"),
                ("OPENAI_API_KEY", "providers[0].api_key_env"),
                ("SEARCH_KEY", "tools.mcp[0].env"),
            ]
        );
    }

    #[test]
    fn a_variable_set_in_the_shell_is_stored_encrypted_where_the_host_can() {
        let needed = needed(&config(README));
        let vars = [
            ("TELEGRAM_BOT_TOKEN", "1:a"),
            ("OPENAI_API_KEY", "sk"),
            ("SEARCH_KEY", "k"),
        ];
        let encrypted = plan_with(&needed, &vars, &[], true).unwrap();
        assert!(
            encrypted
                .iter()
                .all(|(_, d, store)| *d == Delivery::Encrypted && *store)
        );
        let plain = plan_with(&needed, &vars, &[], false).unwrap();
        assert!(
            plain
                .iter()
                .all(|(_, d, store)| *d == Delivery::Plain && *store)
        );
    }

    #[test]
    fn installing_again_without_the_variables_keeps_what_is_stored() {
        let needed = needed(&config(README));
        let kept = plan_with(
            &needed,
            &[("SEARCH_KEY", "new")],
            &[
                "TELEGRAM_BOT_TOKEN.cred",
                "OPENAI_API_KEY",
                "SEARCH_KEY.cred",
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            kept,
            [
                ("TELEGRAM_BOT_TOKEN".to_string(), Delivery::Encrypted, false),
                ("OPENAI_API_KEY".to_string(), Delivery::Plain, false),
                ("SEARCH_KEY".to_string(), Delivery::Encrypted, true),
            ]
        );
    }

    #[test]
    fn a_secret_the_unit_could_not_deliver_is_refused_with_the_command_that_fixes_it() {
        let text = README.replace(
            "token_env = \"TELEGRAM_BOT_TOKEN\"",
            "token_file = \"telegram-token\"",
        );
        let needed = needed(&config(&text));
        let missing = plan_with(&needed, &[("OPENAI_API_KEY", "sk")], &[], true).unwrap_err();
        assert_eq!(missing.len(), 2, "{missing:#?}");
        assert!(
            missing[0].starts_with("line 3: telegram.token_file: /etc/hermes/credentials holds no credential telegram-token"),
            "{}",
            missing[0]
        );
        assert!(
            missing[0].ends_with("install -D -m 0600 /path/to/the/secret /etc/hermes/credentials/telegram-token && hermes-gateway service install --config /etc/hermes/hermes.toml"),
            "{}",
            missing[0]
        );
        assert!(
            missing[1].contains("tools.mcp[0].env: SEARCH_KEY is not set in this shell"),
            "{}",
            missing[1]
        );
        assert!(
            missing[1].ends_with("read -rs SEARCH_KEY && export SEARCH_KEY && hermes-gateway service install --config /etc/hermes/hermes.toml"),
            "{}",
            missing[1]
        );
        // The file, once there, is delivered as it is.
        let found = plan_with(
            &needed,
            &[("OPENAI_API_KEY", "sk"), ("SEARCH_KEY", "k")],
            &["telegram-token"],
            true,
        )
        .unwrap();
        assert_eq!(
            found[0],
            ("telegram-token".to_string(), Delivery::Plain, false)
        );
    }

    #[test]
    fn stored_credentials_are_private_and_replace_their_other_form() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("TOKEN.cred"), "old, encrypted").unwrap();
        let mut credentials = vec![Credential {
            name: "TOKEN".into(),
            delivery: Delivery::Plain,
            store: Some(Secret::new("1:new")),
        }];
        store(&mut credentials, &creds).unwrap();
        let file = creds.join("TOKEN");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1:new");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&creds), 0o700);
        assert!(
            !creds.join("TOKEN.cred").exists(),
            "a stale encrypted copy would win later"
        );
        assert_eq!(
            credentials[0].unit_line(&creds),
            format!("LoadCredential=TOKEN:{}", file.display())
        );
    }
}
