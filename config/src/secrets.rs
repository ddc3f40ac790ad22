//! Secrets and where they come from. A secret is never required inline: a `*_env` key names
//! an environment variable and a `*_file` key names a file, and both reach a systemd service
//! as credentials (`$CREDENTIALS_DIRECTORY`), which is how `hermes-gateway service install`
//! delivers them: a `*_env` variable that is unset is read from the credential of the same
//! name, and a relative `*_file` is looked up among the credentials before beside the
//! configuration file. Secrets are read when a job needs them ([`SecretSource::resolve`]),
//! not when the file is loaded.

use std::path::{Path, PathBuf};

use hermes_protocol::Secret;

use crate::report::Problem;
use crate::section::{Doc, Section};

/// Where a secret comes from, and which key of the file said so (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    pub from: SecretFrom,
    pub key: String,
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    Env(String),
    /// `base` is the config file's directory, for relative paths outside systemd.
    File {
        path: PathBuf,
        base: PathBuf,
    },
}

impl SecretSource {
    /// Reads the secret now. The problem names the variable or file, and the key that
    /// named it.
    pub fn resolve(&self) -> Result<Secret, Problem> {
        self.read().map_err(|message| self.problem(message))
    }

    fn read(&self) -> Result<Secret, String> {
        match &self.from {
            SecretFrom::Env(name) => match read_variable(name) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(Unset) => Err(format!(
                    "environment variable {name} is not set (nor a credential {name} in $CREDENTIALS_DIRECTORY)"
                )),
            },
            SecretFrom::File { path, base } => {
                let full = secret_file_path(path, base);
                match std::fs::read_to_string(&full) {
                    Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                    Ok(_) => Err(format!("file {} is empty", full.display())),
                    Err(e) => Err(format!("cannot read {}: {e}", full.display())),
                }
            }
        }
    }

    /// The file the secret is read from, when it is one.
    pub fn file(&self) -> Option<PathBuf> {
        match &self.from {
            SecretFrom::Env(_) => None,
            SecretFrom::File { path, base } => Some(secret_file_path(path, base)),
        }
    }

    /// "env TELEGRAM_BOT_TOKEN" or "file /run/credentials/…", for check-config's report.
    pub fn describe(&self) -> String {
        match &self.from {
            SecretFrom::Env(name) => format!("env {name}"),
            SecretFrom::File { path, base } => {
                format!("file {}", secret_file_path(path, base).display())
            }
        }
    }

    fn problem(&self, message: String) -> Problem {
        Problem {
            line: self.line,
            key: self.key.clone(),
            message,
        }
    }
}

/// Neither the environment nor the credentials hold the variable.
#[derive(Debug, PartialEq, Eq)]
pub struct Unset;

/// The value of the environment variable `name`, else of the systemd credential named
/// `name` (`$CREDENTIALS_DIRECTORY/<name>`). The environment wins, so a variable set by hand
/// overrides what the unit delivers; the credential is how the unit delivers a `*_env`
/// secret without putting it in the unit file or the service's environment.
pub fn read_variable(name: &str) -> Result<String, Unset> {
    read_variable_from(name, |n| std::env::var_os(n))
}

/// [`read_variable`] with the environment given by `var`.
fn read_variable_from(
    name: &str,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<String, Unset> {
    if let Some(value) = var(name) {
        return value.into_string().map_err(|_| Unset);
    }
    let creds = var("CREDENTIALS_DIRECTORY").ok_or(Unset)?;
    if !valid_credential_name(name) {
        return Err(Unset);
    }
    let text = std::fs::read_to_string(Path::new(&creds).join(name)).map_err(|_| Unset)?;
    // A credential file made with `echo` ends in a newline that is not part of the secret.
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// A name systemd accepts for a credential: one file name, no '/'.
pub fn valid_credential_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

fn secret_file_path(path: &Path, base: &Path) -> PathBuf {
    secret_file_path_in(
        path,
        base,
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .as_deref()
            .map(Path::new),
    )
}

/// A relative `*_file` is a credential's name first (when the credential exists), then a
/// path beside the configuration file; an absolute one is itself.
fn secret_file_path_in(path: &Path, base: &Path, credentials: Option<&Path>) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if let Some(creds) = credentials {
        let candidate = creds.join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    base.join(path)
}

impl Doc<'_> {
    /// The source named by `env_key` or `file_key` of `section`, when one is set.
    pub(crate) fn secret(
        &mut self,
        section: &mut Section,
        env_key: &'static str,
        file_key: &'static str,
    ) -> Option<SecretSource> {
        let env_line = section.raw_line(env_key, self);
        let file_line = section.raw_line(file_key, self);
        let env: Option<String> = section.take(env_key, self);
        let file: Option<PathBuf> = section.take(file_key, self);
        match (env, file) {
            (Some(_), Some(_)) => {
                self.problems.push(Problem {
                    line: file_line,
                    key: section.key_path(file_key),
                    message: format!("set either {env_key} or {file_key}, not both"),
                });
                None
            }
            (Some(name), None) => Some(SecretSource {
                from: SecretFrom::Env(name),
                key: section.key_path(env_key),
                line: env_line,
            }),
            (None, Some(path)) => Some(SecretSource {
                from: SecretFrom::File {
                    path,
                    base: self.base.to_path_buf(),
                },
                key: section.key_path(file_key),
                line: file_line,
            }),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::test_support::{MINIMAL, parse, problem_lines};

    #[test]
    fn out_of_range_and_both_secret_sources_are_problems() {
        let text = format!("{MINIMAL}\n[workers]\npool_size = 0\n\n[state]\n[agent]\n",).replace(
            "token_env = \"TG\"",
            "token_env = \"TG\"\ntoken_file = \"tok\"",
        );
        let lines = problem_lines(&text);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("workers.pool_size: 0 is out of range")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("not both")), "{lines:#?}");
    }

    #[test]
    fn secrets_resolve_from_files_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("hermes-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "sk-123\n").unwrap();
        let text = MINIMAL.replace("model = \"m\"", "model = \"m\"\napi_key_file = \"key\"");
        let c = Config::parse(&text, &dir.join("h.toml"), &dir).unwrap();
        let plan = c.providers[0].plan().unwrap();
        assert_eq!(plan.api_key.unwrap().expose(), "sk-123");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The environment of a test: `vars`, nothing else (the process's own is not touched,
    /// so tests running in parallel cannot see each other's).
    fn env_of(vars: &[(&str, &Path)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + use<> {
        let vars: Vec<(String, std::ffi::OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn an_env_secret_comes_from_the_environment_then_from_the_credential_of_its_name() {
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("TG_TOKEN"), "from-credential\n").unwrap();
        let dir = creds.path();
        // Both: the environment wins (an operator's override beats what the unit delivers).
        let both = env_of(&[
            ("TG_TOKEN", Path::new("from-env")),
            ("CREDENTIALS_DIRECTORY", dir),
        ]);
        assert_eq!(read_variable_from("TG_TOKEN", both).unwrap(), "from-env");
        // Unset: the credential, without the newline `echo` leaves.
        let unit = env_of(&[("CREDENTIALS_DIRECTORY", dir)]);
        assert_eq!(
            read_variable_from("TG_TOKEN", &unit).unwrap(),
            "from-credential"
        );
        // Neither, or a name systemd could never deliver.
        assert_eq!(read_variable_from("OTHER", &unit), Err(Unset));
        assert_eq!(read_variable_from("../TG_TOKEN", &unit), Err(Unset));
        assert_eq!(read_variable_from("TG_TOKEN", env_of(&[])), Err(Unset));
    }

    #[test]
    fn a_relative_file_secret_is_a_credential_first_then_a_path_beside_the_config() {
        let creds = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("telegram-token"), "a").unwrap();
        std::fs::write(base.path().join("telegram-token"), "b").unwrap();
        std::fs::write(base.path().join("only-here"), "c").unwrap();
        let file = |name: &str, credentials: Option<&Path>| {
            secret_file_path_in(Path::new(name), base.path(), credentials)
        };
        assert_eq!(
            file("telegram-token", Some(creds.path())),
            creds.path().join("telegram-token")
        );
        assert_eq!(
            file("only-here", Some(creds.path())),
            base.path().join("only-here")
        );
        assert_eq!(
            file("telegram-token", None),
            base.path().join("telegram-token")
        );
        assert_eq!(file("/abs/key", Some(creds.path())), Path::new("/abs/key"));
    }

    #[test]
    fn a_missing_secret_is_a_problem_naming_the_variable() {
        let c = parse(&MINIMAL.replace("\"TG\"", "\"HERMES_TEST_SURELY_UNSET_VAR\"")).unwrap();
        let problem = c.telegram.token.resolve().unwrap_err();
        assert_eq!(problem.key, "telegram.token_env");
        assert!(
            problem
                .message
                .contains("HERMES_TEST_SURELY_UNSET_VAR is not set")
        );
        assert_eq!(problem.line, Some(3));
        assert!(c.job_plans().is_ok(), "the token is no provider's secret");
    }
}
