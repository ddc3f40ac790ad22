//! `hermes-gateway check-config`: everything `run` would check before starting, and a
//! summary of what it found, without starting anything.

use std::path::Path;

use hermes_config::{EXIT_CONFIG, GroupMode, load_or_report};

use crate::sandbox;
use crate::setup;
use hermes_protocol::Confirm;

pub fn check_config(path: &Path) -> i32 {
    let Some((config, setup)) = load_or_report(path, setup::resolve, |e| eprintln!("{e}")) else {
        return EXIT_CONFIG;
    };
    let t = &config.telegram;
    println!("configuration OK: {}", path.display());
    println!(
        "  telegram: {} (token from {}), {} allowed user(s)",
        t.api_url,
        t.token.describe(),
        t.allowed_users.len()
    );
    for (i, p) in config.providers.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "fallback" };
        let key = p
            .api_key
            .as_ref()
            .map(|k| format!("key from {}", k.describe()))
            .unwrap_or_else(|| "no key".into());
        println!(
            "  provider {} ({role}): model {} at {}, {key}, {} retries",
            p.name, p.model, p.base_url, p.max_retries
        );
    }
    println!(
        "  budgets: {}",
        crate::usage::budget::describe(&config.budgets)
    );
    let w = &config.workers;
    println!(
        "  workers: {} x{}, job timeout {} s, memory limit {}, program {}",
        w.mode.as_str(),
        w.pool_size,
        w.job_timeout_secs,
        if w.memory_limit_mb == 0 {
            "none".to_string()
        } else {
            format!("{} MiB", w.memory_limit_mb)
        },
        setup.worker_program.display()
    );
    for tool in &config.tools.mcp {
        let mut line = format!(
            "  tools {}: {} {}, call timeout {} s",
            tool.name,
            tool.command,
            tool.args.join(" "),
            tool.timeout_secs
        );
        if !tool.env.is_empty() {
            line.push_str(&format!(", passes {}", tool.env.join(", ")));
        }
        if !tool.sandbox {
            line.push_str(", WITHOUT the sandbox");
        }
        let paths = |paths: &[std::path::PathBuf]| {
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if tool.sandbox && !tool.readable.is_empty() {
            line.push_str(&format!(", may read {}", paths(&tool.readable)));
        }
        if tool.sandbox && !tool.writable.is_empty() {
            line.push_str(&format!(", may write {}", paths(&tool.writable)));
        }
        match &tool.confirm {
            Confirm::Never => {}
            Confirm::All => line.push_str(&format!(
                ", every call approved in the chat (timeout {} s)",
                tool.confirm_timeout_secs
            )),
            Confirm::Tools(names) => line.push_str(&format!(
                ", calls to {} approved in the chat (timeout {} s)",
                names.join(", "),
                tool.confirm_timeout_secs
            )),
        }
        println!("{line}");
    }
    let report = sandbox::probe_blocking(&setup.worker_program);
    println!("  {}", report.summary());
    println!(
        "  chats: {}, groups: {}, {} admin(s)",
        if t.streaming {
            format!("streamed (edits every {} ms)", t.edit_interval_ms)
        } else {
            "answers sent when finished".to_string()
        },
        match t.group_mode {
            GroupMode::Mention => "mentions and replies only",
            GroupMode::All => "every message",
        },
        t.admin_users.len()
    );
    if config.state.dir.is_none() && std::env::var_os("STATE_DIRECTORY").is_none() {
        println!(
            "  state: {} when run by hand; under the unit, its StateDirectory ({} for the system unit)",
            setup.state_dir.display(),
            crate::service::SYSTEM_STATE
        );
    } else {
        println!("  state: {}", setup.state_dir.display());
    }
    for warning in crate::service::unit_limits_warnings(&config, path) {
        println!("warning: {warning}");
    }
    for line in report.warnings() {
        println!("warning: {line}");
    }
    for name in sandbox::opted_out(&config) {
        println!("warning: tool server {name:?} runs without the sandbox (sandbox = false)");
    }
    if t.allowed_users.is_empty() {
        println!(
            "warning: telegram.allowed_users is empty: the bot will answer nobody but tell them their id"
        );
    }
    0
}
