//! Framing: a `u32` big-endian payload length, then one [`codec`] payload.
//!
//! The gateway reads frames from processes it does not trust to be well-behaved (a worker
//! may be half-dead, buggy, or not a worker at all), so every way a byte stream can be
//! wrong is a [`FrameError`] value: a clean close, a truncated frame, a length beyond the
//! cap (checked before anything is allocated), a payload that does not decode. Nothing
//! here panics on input. Reading and writing frames on a stream is
//! [`Connection`](crate::Connection)'s business; this module only says what a frame is.

use std::io;

use serde::Serialize;

use crate::codec::{self, CodecError};

/// Largest payload accepted or sent. A job carries a conversation, so this is generous,
/// but it bounds what one bad length prefix can make the gateway allocate.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream at a frame boundary.
    #[error("connection closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("truncated frame: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    /// The length prefix announces more than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes is over the {max}-byte cap")]
    Oversized { len: usize, max: usize },
    /// The payload is not a message of the expected type.
    #[error("undecodable frame: {0}")]
    Undecodable(#[source] CodecError),
    /// The message could not be encoded (a bug on the sending side, or over the cap).
    #[error("unencodable message: {0}")]
    Unencodable(#[source] CodecError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// True when the peer is gone rather than misbehaving.
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Closed | FrameError::Truncated { .. } => true,
            FrameError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// Encodes `message` as one frame, prefix included.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let payload = codec::to_bytes(message).map_err(FrameError::Unencodable)?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::Oversized {
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::Oversized {
        len: payload.len(),
        max: MAX_FRAME_LEN,
    })?;
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// The length of the whole frame (prefix included) that `buf` starts with: `Ok(None)`
/// while not even the prefix is there. A prefix over the cap is an error at once, before
/// anything is allocated for the payload.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Oversized {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(Some(HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FromWorker, JobId, ToWorker};

    #[test]
    fn length_prefix_is_big_endian_u32() {
        let frame = encode(&ToWorker::Shutdown).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - HEADER_LEN);
        assert_eq!(frame_len(&frame).unwrap(), Some(frame.len()));
        assert_eq!(frame_len(&frame[..3]).unwrap(), None);
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let mut frame = (u32::MAX).to_be_bytes().to_vec();
        frame.extend_from_slice(b"junk");
        assert!(matches!(
            frame_len(&frame),
            Err(FrameError::Oversized { len, .. }) if len == u32::MAX as usize
        ));
    }

    #[test]
    fn oversized_message_is_not_sent() {
        let big = FromWorker::Event {
            job_id: JobId(1),
            event: crate::wire::Event::Delta("x".repeat(MAX_FRAME_LEN + 1)),
        };
        assert!(matches!(encode(&big), Err(FrameError::Oversized { .. })));
    }
}
