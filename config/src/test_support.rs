//! The smallest valid file and the ways the section modules' tests parse one.

use std::path::Path;

use crate::{Config, Problem};

pub(crate) const MINIMAL: &str = r#"
[telegram]
token_env = "TG"

[[providers]]
name = "main"
base_url = "https://api.example.com/v1"
model = "m"
"#;

pub(crate) fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    Config::parse(text, Path::new("hermes.toml"), Path::new("/etc/hermes"))
}

/// The problems with `text`, as the lines an operator reads.
pub(crate) fn problem_lines(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("the file should be refused")
        .iter()
        .map(|p| p.to_string())
        .collect()
}
