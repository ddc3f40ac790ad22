//! One end of the socket between the gateway and a worker: read a frame, write a frame,
//! and nothing else (the shape of mini-redis's `Connection`). Both ends use it, so how
//! messages travel (framing, buffering, and later whatever else a frame carries) changes
//! here and nowhere else.
//!
//! Reading is cancel-safe: bytes that arrived but do not yet make a whole frame stay in
//! the connection's buffer, so a read may wait in a `select!` beside a deadline, a stop or
//! a job's own events and lose nothing when another branch wins. Either side may therefore
//! listen to the other at any time, a job in flight included. Writes send one whole frame
//! and flush it.

use bytes::{Buf, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec;
use crate::frame::{self, FrameError, HEADER_LEN};

/// Room the buffer keeps for a read: most frames (events, short outcomes) arrive whole in
/// one read of this size.
const READ_CHUNK: usize = 8 * 1024;

pub struct Connection<S> {
    stream: S,
    /// Bytes read and not yet handed out as a frame.
    buffer: BytesMut,
}

impl<S> Connection<S> {
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// The stream, for what only it knows (the peer's credentials).
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream itself, bypassing the framing: only for tests that play a peer writing
    /// bytes that are not frames.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: AsyncRead + Unpin> Connection<S> {
    /// Reads the next frame as a `T`. [`FrameError::Closed`] when the peer closed the
    /// stream between frames; every other way the stream can be wrong is another
    /// [`FrameError`].
    pub async fn read_frame<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        self.read_payload_with(|payload| {
            codec::from_bytes(payload).map_err(FrameError::Undecodable)
        })
        .await?
    }

    /// Reads the next frame and hands its payload, undecoded, to `decode`: for the
    /// handshake, whose version is read before the rest.
    pub(crate) async fn read_payload_with<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, FrameError> {
        let end = loop {
            if let Some(end) = frame::frame_len(&self.buffer)? {
                if self.buffer.len() >= end {
                    break end;
                }
                self.buffer.reserve(end - self.buffer.len());
            }
            if self.fill().await? == 0 {
                return Err(match frame::frame_len(&self.buffer)? {
                    _ if self.buffer.is_empty() => FrameError::Closed,
                    needed => FrameError::Truncated {
                        needed: needed.unwrap_or(HEADER_LEN),
                        got: self.buffer.len(),
                    },
                });
            }
        };
        let value = decode(&self.buffer[HEADER_LEN..end]);
        self.buffer.advance(end);
        Ok(value)
    }

    /// Resolves once the peer has sent anything or closed the stream, consuming nothing:
    /// how a side that expects silence notices a peer that is gone or speaks out of turn.
    pub async fn readable(&mut self) {
        if self.buffer.is_empty() {
            let _ = self.fill().await;
        }
    }

    /// One read into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize, FrameError> {
        if self.buffer.capacity() - self.buffer.len() < READ_CHUNK {
            self.buffer.reserve(READ_CHUNK);
        }
        Ok(self.stream.read_buf(&mut self.buffer).await?)
    }
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Encodes and writes one frame, then flushes.
    pub async fn write_frame<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let frame = frame::encode(message)?;
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{MAX_FRAME_LEN, encode};
    use crate::wire::{Event, FromWorker, JobId, ToWorker};

    fn sample() -> FromWorker {
        FromWorker::Event {
            job_id: JobId(7),
            event: Event::Delta("héllo".into()),
        }
    }

    async fn read_one<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
        Connection::new(bytes).read_frame().await
    }

    #[test]
    fn round_trip_through_a_buffer() {
        let frame = encode(&sample()).unwrap();
        let mut conn = Connection::new(&frame[..]);
        let rt = properties::runtime();
        assert_eq!(
            rt.block_on(conn.read_frame::<FromWorker>()).unwrap(),
            sample()
        );
        assert!(conn.buffer.is_empty(), "the frame was used whole");
    }

    #[tokio::test]
    async fn async_read_sees_close_truncation_and_frames() {
        let frame = encode(&sample()).unwrap();
        let two = [frame.clone(), frame.clone()].concat();
        let mut conn = Connection::new(&two[..]);
        assert_eq!(conn.read_frame::<FromWorker>().await.unwrap(), sample());
        assert_eq!(conn.read_frame::<FromWorker>().await.unwrap(), sample());
        assert!(matches!(
            conn.read_frame::<FromWorker>().await,
            Err(FrameError::Closed)
        ));

        let err = read_one::<FromWorker>(&frame[..frame.len() - 1])
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }));
        assert!(err.is_disconnect());
    }

    #[tokio::test]
    async fn every_truncation_is_a_truncated_error() {
        let frame = encode(&sample()).unwrap();
        for cut in 1..frame.len() {
            match read_one::<FromWorker>(&frame[..cut]).await {
                Err(e @ FrameError::Truncated { got, .. }) => {
                    assert_eq!(got, cut);
                    assert!(e.is_disconnect());
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(matches!(
            read_one::<FromWorker>(&frame[..2]).await,
            Err(FrameError::Truncated { needed: 4, got: 2 })
        ));
    }

    #[tokio::test]
    async fn oversized_prefix_is_refused_before_reading_on() {
        let mut frame = (u32::MAX).to_be_bytes().to_vec();
        frame.extend_from_slice(b"junk");
        assert!(matches!(
            read_one::<FromWorker>(&frame).await,
            Err(FrameError::Oversized { len, max }) if len == u32::MAX as usize && max == MAX_FRAME_LEN
        ));
    }

    #[tokio::test]
    async fn garbage_payload_is_undecodable() {
        let mut frame = 3u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_one::<FromWorker>(&frame).await,
            Err(FrameError::Undecodable(_))
        ));
    }

    #[tokio::test]
    async fn trailing_bytes_inside_a_frame_are_undecodable() {
        let payload = codec::to_bytes(&ToWorker::Shutdown).unwrap();
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        frame.push(0);
        assert!(matches!(
            read_one::<ToWorker>(&frame).await,
            Err(FrameError::Undecodable(_))
        ));
    }

    #[tokio::test]
    async fn async_write_then_read() {
        let (a, b) = tokio::io::duplex(64);
        let mut writer = Connection::new(a);
        let mut reader = Connection::new(b);
        let big = FromWorker::Event {
            job_id: JobId(1),
            event: Event::Delta("x".repeat(100_000)),
        };
        let sent = big.clone();
        let writing = tokio::spawn(async move {
            writer.write_frame(&sample()).await.unwrap();
            writer.write_frame(&sent).await.unwrap();
        });
        assert_eq!(reader.read_frame::<FromWorker>().await.unwrap(), sample());
        assert_eq!(reader.read_frame::<FromWorker>().await.unwrap(), big);
        writing.await.unwrap();
        assert!(matches!(
            reader.read_frame::<FromWorker>().await,
            Err(FrameError::Closed)
        ));
    }

    /// A read that loses a `select!` keeps what it read: the frame arrives whole later.
    #[tokio::test]
    async fn a_cancelled_read_loses_nothing() {
        let (mut raw, b) = tokio::io::duplex(1024);
        let mut reader = Connection::new(b);
        let frame = encode(&sample()).unwrap();
        raw.write_all(&frame[..5]).await.unwrap();
        tokio::select! {
            biased;
            read = reader.read_frame::<FromWorker>() => panic!("half a frame read: {read:?}"),
            _ = tokio::task::yield_now() => {}
        }
        reader.readable().await;
        raw.write_all(&frame[5..]).await.unwrap();
        assert_eq!(reader.read_frame::<FromWorker>().await.unwrap(), sample());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::frame::encode;
    use crate::wire::{Event, FromWorker, JobId, ToWorker};
    use proptest::prelude::*;

    /// Reads frames until the first error, as the gateway would from a worker.
    fn read_all<T: DeserializeOwned>(bytes: &[u8]) {
        runtime().block_on(async {
            let mut conn = Connection::new(bytes);
            while conn.read_frame::<T>().await.is_ok() {}
        });
    }

    pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever a worker writes, the gateway gets values or an error, never a panic.
        #[test]
        fn any_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            read_all::<FromWorker>(&bytes);
            read_all::<ToWorker>(&bytes);
            let _ = crate::handshake::decode_hello(&bytes);
        }

        /// Same with a plausible length prefix in front, so payload decoding is exercised.
        #[test]
        fn any_payload_behind_a_valid_prefix_is_handled(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            read_all::<FromWorker>(&frame);
            read_all::<crate::handshake::Hello>(&frame);
        }

        #[test]
        fn deltas_round_trip(text in ".*", id in any::<u64>()) {
            let message = FromWorker::Event { job_id: JobId(id), event: Event::Delta(text) };
            let frame = encode(&message).unwrap();
            let back: FromWorker = runtime().block_on(Connection::new(&frame[..]).read_frame()).unwrap();
            prop_assert_eq!(back, message);
        }
    }

    #[test]
    fn async_reader_never_panics_on_random_streams() {
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
                read_all::<FromWorker>(&bytes);
                Ok(())
            })
            .unwrap();
    }
}
