//! What every job of a configuration is sent with ([`JobPlans`]): the provider chain with
//! its keys read, the tool servers with their variables resolved and what their sandbox
//! hides (the file itself, its secret files, the credentials and state directories).

use std::path::{Path, PathBuf};

use hermes_protocol::{ProviderPlan, ToolServer, TranscriptionPlan};

use crate::Config;
use crate::report::Problem;
use crate::secrets::{SecretFrom, SecretSource};

impl Config {
    /// What no tool may read, as far as this file tells: the file itself, every secret
    /// file it names, systemd's credentials directory (`$CREDENTIALS_DIRECTORY`) and
    /// `state.dir` when set. Absolute (relative ones are taken from the working
    /// directory). The gateway adds the state and runtime directories it chose, and the
    /// directories `service install` stores credentials in.
    pub fn hidden_paths(&self) -> Vec<PathBuf> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        self.hidden_paths_with(credentials.as_deref())
    }

    fn hidden_paths_with(&self, credentials: Option<&Path>) -> Vec<PathBuf> {
        let secrets = std::iter::once(&self.telegram.token)
            .chain(self.providers.iter().filter_map(|p| p.api_key.as_ref()))
            .flat_map(|source| secret_files(source, credentials));
        let mut hidden: Vec<PathBuf> = std::iter::once(self.path.clone())
            .chain(secrets)
            .chain(credentials.map(Path::to_path_buf))
            .chain(self.state.dir.clone())
            .map(|p| absolute(&p))
            .collect();
        hidden.sort();
        hidden.dedup();
        hidden
    }

    /// The provider chain and the tool servers as a job carries them, every key and
    /// passed-through variable read now; each one that cannot be is a problem.
    pub fn job_plans(&self) -> Result<JobPlans, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut plans = JobPlans::default();
        for provider in &self.providers {
            match provider.plan() {
                Ok(plan) => plans.providers.push(plan),
                Err(problem) => problems.push(problem),
            }
        }
        let hidden = self.hidden_paths();
        for server in &self.tools.mcp {
            match server.spec() {
                Ok(mut spec) => {
                    if let Some(confinement) = &mut spec.sandbox {
                        confinement.hidden = hidden.clone();
                    }
                    plans.tools.push(spec);
                }
                Err(message) => problems.push(Problem {
                    line: server.line,
                    key: format!("{}.env", server.key),
                    message,
                }),
            }
        }
        plans.transcription = self.transcription.as_ref().and_then(|t| {
            let provider = plans.providers.iter().find(|p| p.name == t.provider)?;
            Some(TranscriptionPlan {
                provider: provider.clone(),
                model: t.model.clone(),
            })
        });
        if problems.is_empty() {
            Ok(plans)
        } else {
            Err(problems)
        }
    }
}

/// Every file a `*_file` secret may be read from: an absolute one is itself; a relative
/// one is the credential of that name and the file beside the configuration, both, since
/// which one is read depends on what exists when it is read (a credential stored later,
/// a copy left beside the file).
fn secret_files(source: &SecretSource, credentials: Option<&Path>) -> Vec<PathBuf> {
    match &source.from {
        SecretFrom::Env(_) => Vec::new(),
        SecretFrom::File { path, .. } if path.is_absolute() => vec![path.clone()],
        SecretFrom::File { path, base } => std::iter::once(base.join(path))
            .chain(credentials.map(|dir| dir.join(path)))
            .collect(),
    }
}

/// `path` from the working directory when relative; as it is when that cannot be known.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What every job of this configuration is sent with.
#[derive(Debug, Clone, Default)]
pub struct JobPlans {
    /// Tried in order: the first is the primary, the rest are fallbacks.
    pub providers: Vec<ProviderPlan>,
    pub tools: Vec<ToolServer>,
    /// `[transcription]` with its provider's key read.
    pub transcription: Option<TranscriptionPlan>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{MINIMAL, parse};

    #[test]
    fn the_configuration_and_its_secret_files_are_hidden_from_tools() {
        let text = MINIMAL
            .replace("token_env = \"TG\"", "token_file = \"/run/keys/telegram\"")
            .replace(
                "model = \"m\"",
                "model = \"m\"\napi_key_file = \"/run/keys/provider\"",
            );
        let config = parse(&text).unwrap();
        let hidden = config.hidden_paths();
        for path in ["/run/keys/telegram", "/run/keys/provider"] {
            assert!(hidden.contains(&PathBuf::from(path)), "{hidden:?}");
        }
        assert!(hidden.iter().all(|p| p.is_absolute()), "{hidden:?}");
        assert!(hidden.contains(&absolute(Path::new("hermes.toml"))));
    }

    #[test]
    fn a_relative_secret_file_is_hidden_as_a_credential_and_beside_the_configuration() {
        let text = MINIMAL.replace("token_env = \"TG\"", "token_file = \"telegram-token\"");
        let config = parse(&text).unwrap();
        let creds = Path::new("/run/credentials/hermes-gateway.service");
        let hidden = config.hidden_paths_with(Some(creds));
        for path in [creds.join("telegram-token"), creds.to_path_buf()] {
            assert!(hidden.contains(&path), "{hidden:?}");
        }
        // test_support parses as if the file were in /etc/hermes.
        let beside = PathBuf::from("/etc/hermes/telegram-token");
        assert!(hidden.contains(&beside), "{hidden:?}");
    }
}
