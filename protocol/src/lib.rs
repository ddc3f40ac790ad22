//! The contract between `hermes-gateway` and `hermes-worker`, and nothing else.
//!
//! The gateway and its workers are separate processes so that nothing a request does can
//! take the gateway down. Everything the two must agree on lives here, in one place:
//!
//! - [`wire`]: the typed messages, one file a subject (job, chat, events, approvals,
//!   outcome and failure classes, usage and prices) around the two envelopes, all
//!   re-exported there;
//! - [`sandbox`]: the confinement a job carries for each tool server, and the record of
//!   what the kernel lets the sandbox apply (`hermes-worker sandbox-probe --json`);
//! - [`handshake`]: both sides of the first exchange, version first;
//! - [`connection`]: one end of the socket, reading and writing whole frames, used by both
//!   the gateway and the worker;
//! - [`frame`]: what a frame is, with a size cap and typed errors, so a misbehaving worker
//!   can only ever produce an error value;
//! - [`codec`]: the serde format behind the frames (postcard), kept behind one module so it
//!   can change in one place;
//! - [`zygote`]: the two messages between the gateway and the template process that
//!   `per-request` workers are forked from.
//!
//! The configuration file both binaries read is `hermes-config`'s: it is not on the wire.

pub mod codec;
pub mod connection;
pub mod frame;
pub mod handshake;
pub mod sandbox;
pub mod wire;
pub mod zygote;

pub use connection::Connection;
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use handshake::{HandshakeError, Hello, Welcome};
pub use wire::*;
