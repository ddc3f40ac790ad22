//! `[[tools.mcp]]`: the MCP servers each worker starts over stdio, the variables they are
//! passed, what their sandbox lets them read and write, and which of their tools need a
//! user's approval before each call.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::de::DeValue;

use hermes_protocol::sandbox::Confinement;
use hermes_protocol::{Confirm, Secret, ToolServer};

use crate::report::Problem;
use crate::secrets::{Unset, read_variable};
use crate::section::{Doc, Section, Table};
use crate::workers::WorkersConfig;

#[derive(Debug, Clone, Default)]
pub struct ToolsConfig {
    /// `[[tools.mcp]]`: MCP servers over stdio, started by each worker.
    pub mcp: Vec<McpServerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    /// Names of the gateway's environment variables passed to the server; nothing else is.
    pub env: Vec<String>,
    pub timeout_secs: u64,
    /// Paths the server may read (and execute) besides what the sandbox leaves readable,
    /// even inside a hidden path. Absolute.
    pub readable: Vec<PathBuf>,
    /// Paths the server may write besides its scratch directory. Absolute.
    pub writable: Vec<PathBuf>,
    /// `false`: the server runs unconfined (warned about at start-up and on reload).
    pub sandbox: bool,
    /// Its tools that need a user's approval before each call.
    pub confirm: Confirm,
    /// How long an approval is waited for before it counts as denied.
    pub confirm_timeout_secs: u64,
    /// Where the entry is, for problems found later (an unset variable).
    pub key: String,
    pub line: Option<usize>,
}

impl McpServerConfig {
    /// The server as a job carries it, with the variables it passes through resolved. An
    /// unset one is an error naming it: the operator asked for it by name.
    pub fn spec(&self) -> Result<ToolServer, String> {
        let mut env = Vec::new();
        for name in &self.env {
            match read_variable(name) {
                Ok(value) => env.push((name.clone(), Secret::new(value))),
                Err(Unset) => return Err(format!("environment variable {name} is not set")),
            }
        }
        Ok(ToolServer {
            name: self.name.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env,
            call_timeout_ms: self.timeout_secs.saturating_mul(1000),
            sandbox: self.sandbox.then(|| Confinement {
                readable: self.readable.clone(),
                writable: self.writable.clone(),
                ..Confinement::default()
            }),
            confirm: self.confirm.clone(),
            confirm_timeout_ms: self.confirm_timeout_secs.saturating_mul(1000),
        })
    }
}

impl Doc<'_> {
    /// A list of absolute paths (`readable`, `writable`): a relative one would depend on
    /// the worker's working directory.
    fn absolute_paths(&mut self, s: &mut Section, key: &'static str) -> Vec<PathBuf> {
        let line = s.raw_line(key, self);
        let paths: Vec<PathBuf> = s.take_or(key, Vec::new(), self);
        for path in paths.iter().filter(|p| !p.is_absolute()) {
            self.problems.push(Problem {
                line,
                key: s.key_path(key),
                message: format!("{}: use an absolute path", path.display()),
            });
        }
        paths
    }

    /// `confirm = true` (every tool of the server) or `confirm = ["tool", ...]`.
    fn confirm(&mut self, s: &mut Section) -> Confirm {
        let line = s.raw_line("confirm", self);
        let Some(value) = s.raw("confirm") else {
            return Confirm::Never;
        };
        let problem = match value.get_ref() {
            DeValue::Boolean(true) => return Confirm::All,
            DeValue::Boolean(false) => return Confirm::Never,
            DeValue::Array(_) => {
                match Vec::<String>::deserialize(value.clone().into_deserializer()) {
                    Ok(names) if names.iter().any(|n| n.trim().is_empty()) => {
                        "a tool name is empty".to_string()
                    }
                    Ok(names) if names.is_empty() => return Confirm::Never,
                    Ok(names) => return Confirm::Tools(names),
                    Err(e) => e.message().trim().to_string(),
                }
            }
            _ => "use true (every tool of this server) or a list of its tool names".to_string(),
        };
        self.problems.push(Problem {
            line,
            key: s.key_path("confirm"),
            message: problem,
        });
        Confirm::Never
    }

    pub(crate) fn tools(&mut self, table: Option<&Table>) -> ToolsConfig {
        let mut section = Section::new("tools", table.cloned());
        let entries = self.array_of_tables(&mut section, "mcp", None);
        let mut mcp: Vec<McpServerConfig> = Vec::new();
        for (path, (table, span)) in entries {
            let mut s = Section::new(&path, Some((table, span)));
            let name: Option<String> = s.require("name", self);
            let taken: Vec<&str> = mcp.iter().map(|m| m.name.as_str()).collect();
            self.unique_name(&mut s, &name, &taken);
            if let Some(bad) = name
                .as_deref()
                .filter(|n| !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            {
                // The name prefixes function names the provider sees, which OpenAI limits
                // to [a-zA-Z0-9_-]; '_' is kept for the separator.
                self.problems.push(Problem {
                    line: s.raw_line("name", self),
                    key: s.key_path("name"),
                    message: format!("{bad:?}: use only letters, digits and '-'"),
                });
            }
            let command: Option<String> = s.require("command", self);
            let args = s.take_or("args", Vec::new(), self);
            let env = s.take_or("env", Vec::new(), self);
            let timeout_secs = s.take_in("timeout_secs", 30, 1..=3600, self);
            let readable = self.absolute_paths(&mut s, "readable");
            let writable = self.absolute_paths(&mut s, "writable");
            let sandbox = s.take_or("sandbox", true, self);
            let confirm = self.confirm(&mut s);
            let confirm_timeout_secs = s.take_in("confirm_timeout_secs", 120, 1..=3600, self);
            let line = s.line(self);
            s.finish(self);
            if let (Some(name), Some(command)) = (name, command) {
                mcp.push(McpServerConfig {
                    name,
                    command,
                    args,
                    env,
                    timeout_secs,
                    readable,
                    writable,
                    sandbox,
                    confirm,
                    confirm_timeout_secs,
                    key: path,
                    line,
                });
            }
        }
        section.finish(self);
        ToolsConfig { mcp }
    }

    /// An approval must be able to arrive before the job it is for times out.
    pub(crate) fn confirm_within_job_timeout(
        &mut self,
        tools: &ToolsConfig,
        workers: &WorkersConfig,
    ) {
        for server in tools.mcp.iter().filter(|m| m.confirm != Confirm::Never) {
            if server.confirm_timeout_secs >= workers.job_timeout_secs {
                self.problems.push(Problem {
                    line: server.line,
                    key: format!("{}.confirm_timeout_secs", server.key),
                    message: format!(
                        "{} s is not less than workers.job_timeout_secs ({} s): the job would \
                         time out before an approval could",
                        server.confirm_timeout_secs, workers.job_timeout_secs
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::absolute;
    use crate::test_support::{MINIMAL, parse, problem_lines};

    #[test]
    fn tool_servers_are_checked_entry_by_entry() {
        let text = format!(
            "{MINIMAL}\n[[tools.mcp]]\nname = \"time\"\ncommand = \"python3\"\nargs = [\"-m\", \"mcp_server_time\"]\n\n\
             [[tools.mcp]]\nname = \"time\"\ncommand = 3\n\n[[tools.mcp]]\nname = \"a.b\"\ncommand = \"x\"\ntimeout = 1\n"
        );
        let lines = problem_lines(&text);
        for expected in [
            "tools.mcp[1].name: \"time\" is used by another entry",
            "tools.mcp[1].command:",
            "tools.mcp[2].name: \"a.b\": use only letters",
            "tools.mcp[2].timeout: unknown key",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(expected)),
                "{expected}: {lines:#?}"
            );
        }
        let good = format!(
            "{MINIMAL}\n[[tools.mcp]]\nname = \"time\"\ncommand = \"python3\"\nenv = [\"HERMES_TEST_SURELY_UNSET_VAR\"]\n"
        );
        let config = parse(&good).unwrap();
        assert_eq!(config.tools.mcp[0].timeout_secs, 30);
        let problems = config.job_plans().unwrap_err();
        let tool = problems
            .iter()
            .find(|p| p.key == "tools.mcp[0].env")
            .unwrap_or_else(|| panic!("{problems:?}"));
        assert!(tool.message.contains("HERMES_TEST_SURELY_UNSET_VAR"));
        assert_eq!(tool.line, Some(10));
    }

    #[test]
    fn sandbox_grants_opt_out_and_approvals_are_read_and_checked_with_their_lines() {
        let good = format!(
            "{MINIMAL}\n[[tools.mcp]]\nname = \"files\"\ncommand = \"x\"\n\
             readable = [\"/srv/docs\"]\nwritable = [\"/srv/out\"]\nconfirm = [\"write\"]\n\n\
             [[tools.mcp]]\nname = \"shell\"\ncommand = \"y\"\nsandbox = false\nconfirm = true\n\
             confirm_timeout_secs = 30\n"
        );
        let config = parse(&good).unwrap_or_else(|p| panic!("{p:#?}"));
        let [files, shell] = &config.tools.mcp[..] else {
            panic!("{:?}", config.tools.mcp)
        };
        assert_eq!(files.readable, [PathBuf::from("/srv/docs")]);
        assert_eq!(files.writable, [PathBuf::from("/srv/out")]);
        assert!(files.sandbox);
        assert_eq!(files.confirm, Confirm::Tools(vec!["write".into()]));
        assert_eq!(files.confirm_timeout_secs, 120);
        assert!(!shell.sandbox);
        assert_eq!(shell.confirm, Confirm::All);
        let plans = config.job_plans().unwrap();
        let confinement = plans.tools[0]
            .sandbox
            .as_ref()
            .expect("sandboxed by default");
        assert_eq!(confinement.readable, files.readable);
        assert!(
            confinement
                .hidden
                .contains(&absolute(Path::new("hermes.toml"))),
            "the configuration file is hidden: {confinement:?}"
        );
        assert_eq!(plans.tools[1].sandbox, None, "sandbox = false");
        assert_eq!(plans.tools[1].confirm_timeout_ms, 30_000);

        let bad = format!(
            "{MINIMAL}\n[workers]\njob_timeout_secs = 60\n\n[[tools.mcp]]\nname = \"a\"\ncommand = \"x\"\n\
             readable = [\"docs\"]\nwritable = \"/srv\"\nsandbox = \"no\"\nconfirm = \"all\"\n\n\
             [[tools.mcp]]\nname = \"b\"\ncommand = \"y\"\nconfirm = [\"\"]\n\n\
             [[tools.mcp]]\nname = \"c\"\ncommand = \"z\"\nconfirm = true\n"
        );
        let lines = problem_lines(&bad);
        for expected in [
            "line 16: tools.mcp[0].readable: docs: use an absolute path",
            "line 17: tools.mcp[0].writable:",
            "line 18: tools.mcp[0].sandbox:",
            "line 19: tools.mcp[0].confirm: use true",
            "line 24: tools.mcp[1].confirm: a tool name is empty",
            "line 26: tools.mcp[2].confirm_timeout_secs: 120 s is not less than workers.job_timeout_secs (60 s)",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(expected)),
                "{expected}: {lines:#?}"
            );
        }
        assert_eq!(lines.len(), 6, "{lines:#?}");
    }
}
