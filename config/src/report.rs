//! The error report: what is wrong with a configuration file, each problem with its key and
//! line, all of them at once. [`load_or_report`] is the one sequence every binary follows to
//! get a configuration it can run with, or this report and nothing to run.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Config;

/// Exit status for a configuration the process cannot run with (`EX_CONFIG` of
/// sysexits.h); the systemd unit does not restart on it.
pub const EXIT_CONFIG: i32 = 78;

/// Reads the file at `path`, then lets the caller judge it against this machine
/// (`resolve`: secrets read, a binary found) and turn it into what it runs with. The one
/// sequence `run`, a reload, `check-config` and `hermes-worker ask` follow: the problems
/// of both steps are one [`ConfigError`], given to `report`, and the caller gets nothing
/// to run with.
pub fn load_or_report<T>(
    path: &Path,
    resolve: impl FnOnce(&Config) -> Result<T, Vec<Problem>>,
    report: impl FnOnce(ConfigError),
) -> Option<(Config, T)> {
    let loaded = Config::load(path).and_then(|config| match resolve(&config) {
        Ok(resolved) => Ok((config, resolved)),
        Err(problems) => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }),
    });
    loaded.map_err(report).ok()
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// Dotted path of the key, e.g. `workers.pool_size` or `providers[1].model`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", invalid_summary(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn invalid_summary(path: &Path, problems: &[Problem]) -> String {
    let mut s = format!("invalid configuration in {}:", path.display());
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use crate::test_support::parse;

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = r#"[telegram]
token_env = "TG"
allowd_users = [1]

[workers]
pool_size = "two"
mode = "forked"
"#;
        let problems = parse(text).unwrap_err();
        let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("line 3: telegram.allowd_users: unknown key")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("line 6: workers.pool_size:")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("line 7: workers.mode:")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("providers: missing")),
            "{lines:#?}"
        );
        assert_eq!(problems.len(), 4, "{lines:#?}");
    }
}
