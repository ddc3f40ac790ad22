//! Framing: a `u32` big-endian payload length, then one [`codec`](crate::codec) payload.
//!
//! The gateway reads frames from processes it does not trust to be well-behaved (a worker
//! may be half-dead, buggy, or not a worker at all), so every way a byte stream can be
//! wrong is a [`FrameError`] value: a clean close, a truncated frame, a length beyond the
//! cap (checked before anything is allocated), a payload that does not decode. Nothing
//! here panics on input.

use std::io;

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    /// The stream or buffer ended inside a frame.
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

/// Reads the length prefix at the start of `buf`: `Ok(None)` when fewer than
/// [`HEADER_LEN`] bytes are there yet.
fn payload_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
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
    Ok(Some(len))
}

/// Decodes the frame at the start of `buf`, returning the message and the bytes it used.
/// An incomplete frame is [`FrameError::Truncated`]; an empty buffer is
/// [`FrameError::Closed`].
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<(T, usize), FrameError> {
    if buf.is_empty() {
        return Err(FrameError::Closed);
    }
    let Some(len) = payload_len(buf)? else {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            got: buf.len(),
        });
    };
    let end = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Err(FrameError::Truncated {
            needed: end,
            got: buf.len(),
        });
    };
    let message = codec::from_bytes(payload).map_err(FrameError::Undecodable)?;
    Ok((message, end))
}

/// Reads one frame's payload bytes, undecoded. Used for the handshake, whose first field
/// is read before the rest (see [`crate::wire::decode_hello`]).
pub async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut header).await?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            got,
        });
    }
    let len = payload_len(&header)?.unwrap_or(0);
    let mut payload = vec![0u8; len];
    let got = read_full(reader, &mut payload).await?;
    if got < len {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN + len,
            got: HEADER_LEN + got,
        });
    }
    Ok(payload)
}

/// Reads and decodes one frame.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<T, FrameError> {
    let payload = read_payload(reader).await?;
    codec::from_bytes(&payload).map_err(FrameError::Undecodable)
}

/// Encodes and writes one frame, then flushes.
pub async fn write_frame<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let frame = encode(message)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Fills `buf` until it is full or the stream ends; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FromWorker, JobId, ToWorker};

    fn sample() -> FromWorker {
        FromWorker::Event {
            job_id: JobId(7),
            event: crate::wire::Event::Delta("héllo".into()),
        }
    }

    #[test]
    fn round_trip_through_a_buffer() {
        let frame = encode(&sample()).unwrap();
        let (back, used): (FromWorker, usize) = decode(&frame).unwrap();
        assert_eq!(back, sample());
        assert_eq!(used, frame.len());
    }

    #[test]
    fn length_prefix_is_big_endian_u32() {
        let frame = encode(&ToWorker::Shutdown).unwrap();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - HEADER_LEN);
    }

    #[test]
    fn every_truncation_is_a_truncated_error() {
        let frame = encode(&sample()).unwrap();
        for cut in 1..frame.len() {
            match decode::<FromWorker>(&frame[..cut]) {
                Err(FrameError::Truncated { got, .. }) => assert_eq!(got, cut),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(matches!(decode::<FromWorker>(&[]), Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let mut frame = (u32::MAX).to_be_bytes().to_vec();
        frame.extend_from_slice(b"junk");
        assert!(matches!(
            decode::<FromWorker>(&frame),
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

    #[test]
    fn garbage_payload_is_undecodable() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            decode::<FromWorker>(&frame),
            Err(FrameError::Undecodable(_))
        ));
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_undecodable() {
        let payload = codec::to_bytes(&ToWorker::Shutdown).unwrap();
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        frame.push(0);
        assert!(matches!(
            decode::<ToWorker>(&frame),
            Err(FrameError::Undecodable(_))
        ));
    }

    #[tokio::test]
    async fn async_read_sees_close_truncation_and_frames() {
        let frame = encode(&sample()).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut reader = &two[..];
        assert_eq!(
            read_frame::<FromWorker, _>(&mut reader).await.unwrap(),
            sample()
        );
        assert_eq!(
            read_frame::<FromWorker, _>(&mut reader).await.unwrap(),
            sample()
        );
        assert!(matches!(
            read_frame::<FromWorker, _>(&mut reader).await,
            Err(FrameError::Closed)
        ));

        let mut cut = &frame[..frame.len() - 1];
        let err = read_frame::<FromWorker, _>(&mut cut).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }));
        assert!(err.is_disconnect());

        let mut header_only = &frame[..2];
        assert!(matches!(
            read_frame::<FromWorker, _>(&mut header_only).await,
            Err(FrameError::Truncated { needed: 4, got: 2 })
        ));
    }

    #[tokio::test]
    async fn async_write_then_read() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &sample()).await.unwrap();
        let mut reader = &buf[..];
        assert_eq!(
            read_frame::<FromWorker, _>(&mut reader).await.unwrap(),
            sample()
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::wire::{FromWorker, Hello, ToWorker};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a worker writes, the gateway gets a value or an error, never a panic.
        #[test]
        fn any_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<FromWorker>(&bytes);
            let _ = decode::<ToWorker>(&bytes);
            let _ = crate::wire::decode_hello(&bytes);
        }

        /// Same with a plausible length prefix in front, so payload decoding is exercised.
        #[test]
        fn any_payload_behind_a_valid_prefix_is_handled(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let _ = decode::<FromWorker>(&frame);
            let _ = decode::<Hello>(&frame);
        }

        #[test]
        fn deltas_round_trip(text in ".*", id in any::<u64>()) {
            let message = FromWorker::Event { job_id: crate::wire::JobId(id), event: crate::wire::Event::Delta(text) };
            let frame = encode(&message).unwrap();
            let (back, used): (FromWorker, usize) = decode(&frame).unwrap();
            prop_assert_eq!(back, message);
            prop_assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn async_reader_never_panics_on_random_streams() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
                rt.block_on(async {
                    let mut reader = &bytes[..];
                    while read_frame::<FromWorker, _>(&mut reader).await.is_ok() {}
                });
                Ok(())
            })
            .unwrap();
    }
}
