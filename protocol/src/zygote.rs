//! The template process `hermes-worker zygote`, which `per-request` mode forks its workers
//! from: what the gateway asks it and what it hears back. Each is one message on a
//! `SOCK_SEQPACKET` socket pair (the template's stdin), so no framing is needed. The
//! request carries two descriptors as `SCM_RIGHTS`: the new worker's stderr (the write end
//! of a pipe the gateway reads) and its go-ahead (the read end of a pipe the gateway
//! closes once it expects the worker's connection: a fork is quicker than the gateway's
//! bookkeeping, and a worker that connected first would be refused).

use serde::{Deserialize, Serialize};

/// Larger than any request or answer; a longer one is a broken peer.
pub const MAX_MESSAGE: usize = 8192;

/// Fork a worker with this one-time token and tools' scratch directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub token: String,
    /// The path's bytes (a path need not be UTF-8).
    pub scratch: Vec<u8>,
    /// A spare, which waits for its job: it uses its HTTP client once meanwhile, so its
    /// first job does not fault in that code (a forked worker inherits the template's
    /// state, not the template's page tables for its code).
    pub warm_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forked {
    /// The new worker's pid (its process group's too, a moment later: the worker makes
    /// the group first thing).
    Started { pid: u32 },
    /// No worker was made.
    Failed { why: String },
}
