//! The template process `hermes-worker zygote`, which `per-request` mode forks its workers
//! from: what the gateway asks it and what it hears back. Each is one message on a
//! `SOCK_SEQPACKET` socket pair (the template's stdin), so no framing is needed. The
//! request carries two descriptors as `SCM_RIGHTS`: the new worker's stderr (the write end
//! of a pipe the gateway reads) and its connection to the gateway (its end of a stream
//! socket pair the gateway made for it alone, so a forked worker neither connects to the
//! gateway's socket nor waits to be expected there; it still sends its hello first).

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
