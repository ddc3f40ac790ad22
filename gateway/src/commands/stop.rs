//! `/stop`: cancel the chat's job in flight. Its worker's whole process group is killed
//! (tools included), and then the chat is told, so "stopped" means nothing of it still
//! runs. Messages already waiting behind it are answered as usual.
//!
//! The router acts on `/stop` as it arrives instead of queueing it behind the very job it
//! is meant to end; the job's task sends the one reply once the group is gone.

/// The reply once the job is cancelled and its processes are gone.
pub const STOPPED: &str = "⏹ Stopped. Send a new message whenever you like.";

/// The reply when there was nothing to stop.
pub const NOTHING_RUNNING: &str =
    "There is nothing to stop: I'm not working on anything for this chat.";

/// The reply when the answer won the race against `/stop`.
pub const TOO_LATE: &str = "There was nothing left to stop: the answer had already been sent.";
