//! The agent of hermes-gateway as a library: [`agent`] (the loop of one job: provider
//! chain, tool calls, step budget), [`provider`] (the OpenAI-compatible client, streaming,
//! its failure taxonomy and the retry loop chat completions and transcriptions share),
//! [`media`] (the files of a turn made into what the model reads) and [`tools`] (MCP tool
//! servers: the registry of what runs, and the loop of one answer's calls).
//!
//! The `hermes-worker` binary is the only production user. The library exists so the
//! benchmark's in-process baseline (`hermes-gateway-in-process-baseline` in the tests
//! crate) runs exactly this code without a worker process, the design of the gateway in
//! the incident this project answers, and the isolation's cost can be measured against it.
//!
//! [`sandbox`] is what a tool server runs under: the policy, the trampoline that applies
//! it (`hermes-worker sandbox-exec`), and the probe of what this kernel supports.

pub mod agent;
pub mod media;
pub mod provider;
pub mod sandbox;
pub mod tools;
