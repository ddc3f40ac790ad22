//! Test doubles and helpers for hermes-gateway: fake Telegram and provider servers that can
//! be scripted to misbehave, the small HTTP server they share, /proc inspection, the
//! harness that runs the real binaries against them, and the one way a test skips.

pub mod fake_clock;
pub mod fake_provider;
pub mod fake_telegram;
pub mod harness;
pub mod http;
pub mod mcp;
pub mod pdf;
pub mod procs;
pub mod skip;
