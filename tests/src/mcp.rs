//! The tests crate's MCP server as the integration tests configure it: built once per test
//! binary, written as a `[[tools.mcp]]` table, and the tool results the model was sent.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::fake_provider::ProviderRequest;
use crate::harness::{cargo_build, target_profile_dir};

/// `mcp-server` (see `src/bin/mcp-server.rs`), built once per test binary.
pub fn server() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        cargo_build();
        let path = target_profile_dir().join("mcp-server");
        assert!(path.is_file(), "{} missing", path.display());
        path
    })
}

/// A TOML string (JSON's string syntax is valid TOML basic-string syntax).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A list of TOML strings.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// A `[[tools.mcp]]` table running the test server as `name`, with `extra` lines added.
pub fn entry(name: &str, extra: &str) -> String {
    format!(
        "\n[[tools.mcp]]\nname = {}\ncommand = {}\ntimeout_secs = 30\n{extra}\n",
        quote(name),
        quote(&server().display().to_string()),
    )
}

/// The `tool` messages of a request, as (tool_call_id, content).
pub fn tool_results(request: &ProviderRequest) -> Vec<(String, String)> {
    request.body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap_or_default().to_string(),
                m["content"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
