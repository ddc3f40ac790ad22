//! The contract between `hermes-gateway` and `hermes-worker`, and nothing else.
//!
//! The gateway and its workers are separate processes so that nothing a request does can
//! take the gateway down. Everything the two must agree on lives here, in one place:
//!
//! - [`wire`]: the typed messages (handshake, job, events, outcome, failure classes);
//! - [`frame`]: how one message becomes bytes on the local socket and back, with a size cap
//!   and typed errors, so a misbehaving worker can only ever produce an error value;
//! - [`codec`]: the serde format behind the frames (postcard), kept behind one module so it
//!   can change in one place.
//!
//! The configuration file both binaries read is `hermes-config`'s: it is not on the wire.

pub mod codec;
pub mod frame;
pub mod wire;

pub use frame::{FrameError, MAX_FRAME_LEN, read_frame, write_frame};
pub use wire::*;
